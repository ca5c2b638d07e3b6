"""Residual blocks: y = x + f(x), where f contains at least one heavy op (matmul, conv, attention)."""

from __future__ import annotations

import networkx as nx

from genie.semantic.capture.ir import attrs
from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import nodes_of

_HEAVY = frozenset({"matmul", "conv", "sdpa"})
_SHORTCUT = frozenset({"conv", "matmul", "batch_norm", "layer_norm", "view", "pool"})
_BUDGET = 600  # nodes explored per add; a transformer block is ~50, a ResNet bottleneck ~15


class ResidualPattern(PatternPlugin):
    name = "residual"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        found = [inst for a in nodes_of(graph, "elementwise") if graph.nodes[a]["op"] in ("add", "add_")
                 for inst in [_residual(graph, a)] if inst]
        evidence = [f"{len(found)} residual connections"] if found else []
        return self.result(found, 0.9, graph, evidence=evidence)

    def hints(self) -> list[str]:
        return ["fuse the residual add into the producing GEMM/conv epilogue", "keep the skip tensor resident"]


def _residual(g: nx.DiGraph, add: str) -> tuple[str, str] | None:
    nodes = attrs(g)
    ins = nodes[add]["inputs"]
    if len(ins) != 2 or ins[0] == ins[1] or nodes[ins[0]]["shapes"][0] != nodes[ins[1]]["shapes"][0]:
        return None
    for a, b in (ins, ins[::-1]):
        for skip in _skips(g, a):
            if nodes[skip]["index"] < nodes[b]["index"] and _through_heavy(g, skip, b):
                return (a, add)
    return None


def _skips(g: nx.DiGraph, a: str) -> list[str]:
    """The skip tensor itself, or the input of a projection shortcut (1x1 conv / linear, then a norm)."""
    nodes = attrs(g)
    out, n = [a], a
    for _ in range(3):
        ins = nodes[n]["inputs"]
        if not ins or nodes[n]["kind"] not in _SHORTCUT:
            break
        n = ins[0]
        out.append(n)
    return out


def _through_heavy(g: nx.DiGraph, skip: str, branch: str) -> bool:
    """Is `skip` an ancestor of `branch` with a heavy op in between? Only nodes after `skip` can be on the way."""
    nodes = attrs(g)
    floor = nodes[skip]["index"]
    stack, seen, heavy = [branch], set(), False
    while stack and len(seen) < _BUDGET:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n == skip:
            if heavy:
                return True
            continue
        heavy |= nodes[n]["kind"] in _HEAVY
        stack.extend(i for i in nodes[n]["inputs"] if nodes[i]["index"] >= floor)
    return False
