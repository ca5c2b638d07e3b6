"""Decoder-LLM structure: the token embedding, the LM head, the decoder layers and the LLMShape they give."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from genie.semantic.blocks import group_blocks
from genie.semantic.capture.ir import OUTPUT
from genie.semantic.modality import TEXT, input_modalities
from genie.semantic.patterns.attention import AttentionSite, find_attention
from genie.semantic.profile import LLMShape
from genie.semantic.walk import is_linear, nodes_of


@dataclass(frozen=True, slots=True)
class LMHead:
    node: str
    vocab: int
    tied: bool  # the head multiplies by the token embedding table


def token_embedding(g: nx.DiGraph) -> tuple[str, str] | None:
    """(lookup node, table param) of the largest embedding table fed by a text input."""
    texts = {n for n, m in input_modalities(g).items() if m == TEXT}
    best = None
    for n in nodes_of(g, "embedding"):
        d = g.nodes[n]
        if not d["params"] or not any(_fed_by(g, i, texts) for i in d["inputs"]):
            continue
        rows = g.graph["params"][d["params"][0]].shape[0]
        if best is None or rows > best[0]:
            best = (rows, n, d["params"][0])
    return (best[1], best[2]) if best else None


def _fed_by(g: nx.DiGraph, n: str, inputs: set[str], depth: int = 6) -> bool:
    for _ in range(depth):
        if n in inputs:
            return True
        ins = g.nodes[n]["inputs"]
        if not ins:
            return False
        n = ins[0]
    return n in inputs


def lm_head(g: nx.DiGraph) -> LMHead | None:
    """A weight GEMM producing vocabulary-sized logits that reach the output."""
    emb = token_embedding(g)
    if emb is None:
        return None
    vocab = g.graph["params"][emb[1]].shape[0]
    for n in reversed(nodes_of(g, "matmul")):
        d = g.nodes[n]
        if is_linear(g, n) and d["shapes"][0][-1] == vocab and nx.has_path(g, n, OUTPUT):
            return LMHead(n, vocab, emb[1] in d["params"])
    return None


def decoder_sites(g: nx.DiGraph) -> list[AttentionSite]:
    return [s for s in find_attention(g) if s.causal and s.self_attention]


def decoder_stack(g: nx.DiGraph) -> str:
    """The stack whose entries hold the causal self-attention (e.g. "model.layers"), "" if there is none."""
    sites = {s.core[0] for s in decoder_sites(g)}
    for b in group_blocks(g):
        if b.stack and sites & set(b.nodes):
            return b.stack
    return ""


def llm_shape(g: nx.DiGraph, flops_per_token: float) -> LLMShape | None:
    """The LLMShape of a decoder-only LM; None for encoder-decoders and models without a decoder stack."""
    sites = decoder_sites(g)
    stack, emb, head = decoder_stack(g), token_embedding(g), lm_head(g)
    if not sites or not stack or emb is None or any(not s.self_attention for s in find_attention(g)):
        return None
    groups = group_blocks(g)
    layers = [b for b in groups if b.stack == stack]
    first = g.nodes[layers[0].nodes[0]]["index"]
    last = g.nodes[layers[-1].nodes[-1]]["index"]
    before = _unique_params(g, (n for b in groups if g.nodes[b.nodes[0]]["index"] < first for n in b.nodes))
    after = _unique_params(g, (n for b in groups if g.nodes[b.nodes[0]]["index"] > last for n in b.nodes))
    weights = g.graph["params"]
    table = weights[emb[1]]
    return LLMShape(
        num_layers=len(layers),
        hidden_size=table.shape[-1],
        num_kv_heads=sites[0].kv_heads,
        head_dim=sites[0].head_dim,
        vocab_size=table.shape[0],
        dtype_bytes=g.graph["dtype_bytes"],
        layer_param_bytes=max(sum(weights[p].nbytes for p in _unique_params(g, b.nodes)) for b in layers),
        embedding_param_bytes=sum(weights[p].nbytes for p in before),
        head_param_bytes=sum(weights[p].nbytes for p in after - before),
        tied_embeddings=bool(head and head.tied),
        kv_bytes_per_token=sum(s.kv_bytes_per_token for s in sites),
        flops_per_token=flops_per_token,
    )


def _unique_params(g: nx.DiGraph, nodes) -> set[str]:
    buffers = g.graph["buffers"]
    return {p for n in nodes for p in g.nodes[n]["params"] if p not in buffers}
