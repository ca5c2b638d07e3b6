"""KV-cache update: keys and values of a causal self-attention, persisted per request and appended per token.

Captured with use_cache=False, HF models show no cache writes; the pattern is then the structure that makes K/V
cacheable: causal self-attention whose K and V are projections of the current tokens. Models that write an
explicit cache buffer (index_put / index_copy / slice_scatter / cat into a buffer) are matched directly.
"""

from __future__ import annotations

import networkx as nx

from genie.semantic.patterns.attention import find_attention
from genie.semantic.patterns.base import PatternMatch, PatternPlugin

_WRITES = frozenset({"index_put", "index_put_", "index_copy", "index_copy_", "slice_scatter", "copy_", "cat"})


class KVCachePattern(PatternPlugin):
    name = "kv_cache"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        sites = [s for s in find_attention(graph) if s.causal and (s.self_attention or _writes_cache(graph, s.k))]
        if not sites:
            return None
        explicit = sum(_writes_cache(graph, s.k) for s in sites)
        per_token = sum(s.kv_bytes_per_token for s in sites)
        how = f"{explicit} explicit cache writes" if explicit else "K/V projections of causal self-attention"
        evidence = [f"KV-cache update pattern in {len(sites)} layers ({how}): {per_token} bytes per token"]
        instances = [tuple(n for n in (s.k_linear, s.v_linear, s.core[0]) if n) for s in sites]
        info = [{"kv_bytes_per_token": s.kv_bytes_per_token, "kv_heads": s.kv_heads, "head_dim": s.head_dim}
                for s in sites]
        confidence = 0.95 if explicit else 0.85
        return self.result(instances, confidence, graph, evidence=evidence, info=info,
                           modules=[s.module for s in sites])

    def hints(self) -> list[str]:
        return ["keep each request's KV cache resident on the worker that runs its decode (pin, page it)",
                "decode is memory-bound: batch many sequences per step", "prefill is compute-bound: chunk long prompts"]


def _writes_cache(g: nx.DiGraph, k: str, limit: int = 24) -> bool:
    buffers = g.graph["buffers"]
    stack, seen = [k], set()
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        d = g.nodes[n]
        if d["op"] in _WRITES and any(p in buffers for p in d["params"]):
            return True
        if d["kind"] in ("view", "elementwise", "concat", "index", "copy"):
            stack.extend(d["inputs"])
    return False
