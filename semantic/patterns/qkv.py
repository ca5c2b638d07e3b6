"""Parallel Q/K/V projections: three GEMMs reading the same hidden states, mergeable into one."""

from __future__ import annotations

import networkx as nx

from genie.semantic.patterns.attention import find_attention
from genie.semantic.patterns.base import PatternMatch, PatternPlugin


def parallel_qkv(g: nx.DiGraph) -> list[tuple[str, ...]]:
    """(q_proj, k_proj, v_proj) triples (or pairs) of separate weight GEMMs that share one input."""
    found: list[tuple[str, ...]] = []
    for s in find_attention(g):
        projs = tuple(dict.fromkeys(p for p in (s.q_linear, s.k_linear, s.v_linear) if p))
        if len(projs) < 2:
            continue
        sources = {g.nodes[p]["inputs"][0] if g.nodes[p]["inputs"] else None for p in projs}
        if len(sources) == 1 and None not in sources and projs not in found:
            found.append(projs)
    return found


class ParallelQKVPattern(PatternPlugin):
    name = "parallel_qkv"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        found = parallel_qkv(graph)
        fused = sum(1 for s in find_attention(graph) if s.q_linear and s.q_linear == s.k_linear == s.v_linear)
        evidence = [f"{len(found)} attention blocks project Q, K, V separately from one input"] if found else []
        if fused:
            evidence.append(f"{fused} attention blocks already use one fused QKV projection")
        return self.result(found, 0.95, graph, evidence=evidence)

    def hints(self) -> list[str]:
        return ["concatenate the Q, K, V weights and run one GEMM: the input is read once"]
