"""Convolution followed by an activation (optionally through a norm): the CNN building block."""

from __future__ import annotations

import networkx as nx

from genie.semantic.capture.ops import NORM_KINDS
from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import consumers, nodes_of

_ACT_OPS = frozenset({"tanh", "sigmoid", "erf"})


class ConvActivationPattern(PatternPlugin):
    name = "conv_activation"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        convs = nodes_of(graph, "conv")
        found = [inst for c in convs for inst in [_follow(graph, c)] if inst]
        evidence = [f"{len(convs)} convolutions, {len(found)} followed by an activation"] if convs else []
        if not found:
            return None
        return self.result(found, 0.95, graph, evidence=evidence)

    def hints(self) -> list[str]:
        return ["fuse conv + norm + activation into one kernel", "use channels-last layout", "batch images"]


def _follow(g: nx.DiGraph, conv: str) -> tuple[str, ...] | None:
    """conv -> [norm] -> activation, each step the single consumer of the one before."""
    chain, n = [conv], conv
    for _ in range(2):
        nxt = consumers(g, n)
        if len(nxt) != 1:
            return None
        n = nxt[0]
        d = g.nodes[n]
        if d["kind"] == "activation" or d["op"] in _ACT_OPS:
            return (*chain, n)
        if d["kind"] not in NORM_KINDS:
            return None
        chain.append(n)
    return None
