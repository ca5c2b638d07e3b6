"""Normalisation layers: LayerNorm / GroupNorm, RMSNorm and BatchNorm, as single ops or written out by hand."""

from __future__ import annotations

import networkx as nx

from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import nodes_of

_ROOTS = frozenset({"rsqrt", "sqrt"})


def find_norms(g: nx.DiGraph) -> dict[str, list[tuple[str, ...]]]:
    """Norm occurrences by family: "layer_norm", "rms_norm", "batch_norm"."""
    cached = g.graph.get("_norms")
    if cached is None:
        cached = {
            "layer_norm": [(n,) for n in nodes_of(g, "layer_norm", "group_norm")],
            "rms_norm": [(n,) for n in nodes_of(g, "rms_norm")],
            "batch_norm": [(n,) for n in nodes_of(g, "batch_norm")],
        }
        for root in (n for n in nodes_of(g, "elementwise") if g.nodes[n]["op"] in _ROOTS):
            family, nodes = _written_out(g, root)
            if family:
                cached[family].append(nodes)
        g.graph["_norms"] = cached
    return cached


def _written_out(g: nx.DiGraph, root: str) -> tuple[str | None, tuple[str, ...]]:
    """rsqrt(mean(x^2) + eps) is RMSNorm; rsqrt(mean((x - mean(x))^2) + eps) or var() is LayerNorm."""
    n, chain = root, [root]
    for _ in range(4):
        ins = g.nodes[n]["inputs"]
        if not ins:
            return None, ()
        n = ins[0]
        chain.append(n)
        op = g.nodes[n]["op"]
        if op in ("var", "var_mean"):
            return "layer_norm", tuple(reversed(chain))
        if op == "mean":
            break
    else:
        return None, ()
    squared = g.nodes[n]["inputs"][0] if g.nodes[n]["inputs"] else None
    if squared is None or g.nodes[squared]["op"] not in ("pow", "mul", "square"):
        return None, ()
    chain.append(squared)
    centred = g.nodes[squared]["inputs"][0] if g.nodes[squared]["inputs"] else None
    family = "layer_norm" if centred and g.nodes[centred]["op"] == "sub" else "rms_norm"
    return family, tuple(reversed(chain))


class NormPattern(PatternPlugin):
    family = "layer_norm"
    label = "LayerNorm"

    def __init__(self) -> None:
        self.name = self.family

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        found = find_norms(graph)[self.family]
        evidence = [f"{len(found)} {self.label} layers"] if found else []
        return self.result(found, 0.95, graph, evidence=evidence)

    def hints(self) -> list[str]:
        return ["fuse the norm with the residual add before it and the GEMM after it"]


class RMSNormPattern(NormPattern):
    family = "rms_norm"
    label = "RMSNorm"


class BatchNormPattern(NormPattern):
    family = "batch_norm"
    label = "BatchNorm"

    def hints(self) -> list[str]:
        return ["fold BatchNorm into the preceding convolution's weights for inference"]
