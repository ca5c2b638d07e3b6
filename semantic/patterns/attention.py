"""Attention: the SDPA op, or the eager matmul -> softmax -> matmul chain.

`find_attention(graph)` is shared by the attention, parallel-QKV and KV-cache plugins, the classifier and the
fusion partitioner, so it runs once per graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from genie.semantic.capture.flops import BIAS_FIRST
from genie.semantic.patterns.base import PatternMatch, PatternPlugin
from genie.semantic.walk import ELEMENTWISE_LIKE, is_linear, nodes_of, numel, source

_SCORE_PATH = frozenset({"view", "elementwise", "mask"})  # scale, bias, mask between the scores and the softmax
_MASK_PATH = frozenset({"view", "elementwise", "mask", "constant", "index", "concat", "reduction"})
_TO_PROJECTION = ELEMENTWISE_LIKE | {"index"}
_COMPARE = frozenset({"le", "lt", "ge", "gt"})
_IS_CAUSAL_ARG = {  # where each SDPA overload takes is_causal positionally
    "scaled_dot_product_attention": "arg5",
    "_scaled_dot_product_flash_attention": "arg4",
    "_scaled_dot_product_flash_attention_for_cpu": "arg4",
    "_scaled_dot_product_efficient_attention": "arg6",
    "_scaled_dot_product_cudnn_attention": "arg6",
}


@dataclass(frozen=True, slots=True)
class AttentionSite:
    core: tuple[str, ...]  # the SDPA node, or matmul .. softmax .. matmul
    style: str  # "sdpa" or "eager"
    q: str
    k: str
    v: str
    causal: bool
    self_attention: bool  # q, k, v projected from the same hidden states
    q_linear: str | None
    k_linear: str | None
    v_linear: str | None
    heads: int
    kv_heads: int
    head_dim: int
    kv_bytes_per_token: int  # bytes of K and V per token of the attended sequence (what a KV cache stores)
    module: str


def find_attention(g: nx.DiGraph) -> list[AttentionSite]:
    cached = g.graph.get("_attention")
    if cached is None:
        cached = [*_sdpa_sites(g), *_eager_sites(g)]
        cached.sort(key=lambda s: g.nodes[s.core[0]]["index"])
        g.graph["_attention"] = cached
    return cached


class AttentionPattern(PatternPlugin):
    name = "attention"

    def match(self, graph: nx.DiGraph) -> PatternMatch | None:
        sites = find_attention(graph)
        causal = sum(s.causal for s in sites)
        cross = sum(not s.self_attention for s in sites)
        evidence = [f"{len(sites)} attention blocks ({causal} with causal mask, {cross} cross-attention)"] if sites else []
        info = [{"causal": s.causal, "self": s.self_attention, "style": s.style, "heads": s.heads,
                 "head_dim": s.head_dim} for s in sites]
        return self.result([s.core for s in sites], 0.97, graph, evidence=evidence, info=info,
                           modules=list(dict.fromkeys(s.module for s in sites)))

    def hints(self) -> list[str]:
        return ["use a fused attention kernel (flash / SDPA)", "batch requests of similar length together"]


def _sdpa_sites(g: nx.DiGraph) -> list[AttentionSite]:
    sites = []
    for n in nodes_of(g, "sdpa"):
        ins = g.nodes[n]["inputs"]
        if len(ins) < 3:
            continue
        consts = g.nodes[n]["consts"]
        causal = bool(consts.get("is_causal") or consts.get(_IS_CAUSAL_ARG.get(g.nodes[n]["op"], "")))
        if not causal and len(ins) > 3:
            causal = is_causal_mask(g, ins[3])
        sites.append(_site(g, (n,), "sdpa", ins[0], ins[1], ins[2], causal, g.nodes[n]["arg_shapes"][0]))
    return sites


def _eager_sites(g: nx.DiGraph) -> list[AttentionSite]:
    sites = []
    for s in nodes_of(g, "softmax"):
        path, scores = _walk_back(g, s)
        if scores is None:
            continue
        out = _forward_matmul(g, s)
        if out is None:
            continue
        q, k = _operands(g, scores)
        _, v = _operands(g, out)  # probs @ v
        causal = is_causal_mask(g, g.nodes[s]["inputs"][0])
        core = (scores, *sorted(path - {scores}, key=lambda x: g.nodes[x]["index"]), out)
        sites.append(_site(g, core, "eager", q, k, v, causal, g.nodes[scores]["arg_shapes"][_q_index(g, scores)]))
    return sites


def _walk_back(g: nx.DiGraph, softmax: str) -> tuple[set[str], str | None]:
    """From a softmax back through scale/mask ops to an activation x activation matmul (the scores)."""
    path, stack = set(), [softmax]
    while stack and len(path) < 24:
        n = stack.pop()
        if n in path:
            continue
        path.add(n)
        for i in g.nodes[n]["inputs"][:1] if n == softmax else g.nodes[n]["inputs"]:
            d = g.nodes[i]
            if d["kind"] == "matmul" and not d["params"]:
                path.add(i)
                return path, i
            if d["kind"] in _SCORE_PATH and i not in path and _dominant(g, i, n):
                stack.append(i)
    return path, None


def _dominant(g: nx.DiGraph, i: str, consumer: str) -> bool:
    """Follow only the big operand (the scores), not a broadcast mask or a scalar."""
    return numel(g.nodes[i]["shapes"][0]) >= numel(g.nodes[consumer]["shapes"][0]) if g.nodes[i]["shapes"] else False


def _forward_matmul(g: nx.DiGraph, softmax: str) -> str | None:
    stack, seen = [softmax], set()
    while stack:
        n = stack.pop()
        for m in g.successors(n):
            if m in seen:
                continue
            seen.add(m)
            d = g.nodes[m]
            if d["kind"] == "matmul" and not d["params"]:
                return m
            if d["kind"] == "view" or (d["kind"] == "elementwise" and len(seen) < 6):
                stack.append(m)
    return None


def _q_index(g: nx.DiGraph, mm: str) -> int:
    return 1 if g.nodes[mm]["op"] in BIAS_FIRST and len(g.nodes[mm]["inputs"]) > 2 else 0


def _operands(g: nx.DiGraph, mm: str) -> tuple[str, str]:
    ins = g.nodes[mm]["inputs"]
    i = _q_index(g, mm)
    return ins[i], ins[i + 1] if len(ins) > i + 1 else ins[i]


def _site(g: nx.DiGraph, core: tuple, style: str, q: str, k: str, v: str, causal: bool, q_shape: tuple) -> AttentionSite:
    ql, kl, vl = (_projection(g, x) for x in (q, k, v))
    same = ql is not None and kl is not None and _hidden(g, ql) == _hidden(g, kl)
    head_dim = q_shape[-1]
    kv = (_width(g, k, kl) + _width(g, v, vl)) * _itemsize(g.nodes[k]["dtypes"][0])
    heads, kv_heads = _width(g, q, ql) // head_dim, _width(g, k, kl) // head_dim
    module = g.nodes[core[0]]["module"]
    return AttentionSite(core, style, q, k, v, causal, same, ql, kl, vl, heads, kv_heads, head_dim, kv, module)


def _projection(g: nx.DiGraph, n: str) -> str | None:
    """The weight matmul that produced an attention operand, through views, rotary-embedding ops and the gathers
    that pick Q, K or V heads out of a fused QKV projection (Falcon)."""
    for _ in range(32):
        d = g.nodes[n]
        if is_linear(g, n):
            return n
        if d["kind"] not in _TO_PROJECTION or not d["inputs"]:
            return None
        n = d["inputs"][0]
    return None


def _hidden(g: nx.DiGraph, linear: str) -> str:
    return source(g, g.nodes[linear]["inputs"][0]) if g.nodes[linear]["inputs"] else linear


def _width(g: nx.DiGraph, operand: str, linear: str | None) -> int:
    """Elements per token of Q, K or V: the narrowest tensor between projection and attention (before GQA repeat)."""
    if linear is None:
        return 0
    out = g.nodes[linear]["shapes"][0]
    tokens = max(numel(out) // out[-1], 1)
    narrowest, n = numel(out), operand
    while n != linear:
        d = g.nodes[n]
        narrowest = min(narrowest, numel(d["shapes"][0]))
        n = d["inputs"][0]
    return narrowest // tokens


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize


def is_causal_mask(g: nx.DiGraph, mask: str, limit: int = 96) -> bool:
    """A mask is causal if it comes from tril/triu or an outer comparison of positions (kv_idx <= q_idx)."""
    stack, seen = [mask], set()
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        d = g.nodes[n]
        if d["op"] in ("tril", "triu") or (d["op"] in _COMPARE and _outer(d["arg_shapes"])):
            return True
        if d["kind"] in _MASK_PATH:
            stack.extend(d["inputs"])
    return False


def _outer(shapes: list[tuple[int, ...]]) -> bool:
    """[..., 1, S] vs [..., L, 1]: every query position compared with every key position."""
    if len(shapes) != 2 or min(len(shapes[0]), len(shapes[1])) < 2:
        return False
    a, b = shapes
    return (a[-1] > 1 and a[-2] == 1 and b[-1] == 1 and b[-2] > 1) or (b[-1] > 1 and b[-2] == 1 and a[-1] == 1 and a[-2] > 1)
