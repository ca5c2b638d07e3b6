"""Execution phases: the parts of a model's execution that behave differently.

LLM: prefill (all prompt tokens at once, compute-bound) and decode (one token per step, memory-bound), each
per token. Vision: backbone and head. Multimodal / audio: one branch per input modality and the fusion part.
Recsys: sparse lookups and the dense MLP.
"""

from __future__ import annotations

import networkx as nx

from genie.semantic.capture.ir import op_nodes
from genie.semantic.cost import fragment_cost
from genie.semantic.modality import PRIMARY, TEXT, input_modalities, meeting_points, reach
from genie.semantic.profile import Phase
from genie.semantic.profile import WorkloadType as W
from genie.semantic.walk import nodes_of

_SPATIAL = frozenset({"conv", "sdpa", "pool", "softmax"})


def build_phases(g: nx.DiGraph, workload: W, kv_bytes_per_token: int) -> list[Phase]:
    if workload is W.LLM:
        return llm_phases(g, kv_bytes_per_token)
    if workload is W.VISION:
        return _vision(g)
    if workload in (W.MULTIMODAL, W.AUDIO):
        return _branches(g)
    if workload is W.RECSYS:
        return _recsys(g)
    return [_phase(g, "forward", op_nodes(g), "one request, all inputs at once")]


def llm_phases(g: nx.DiGraph, kv_bytes_per_token: int) -> list[Phase]:
    ops = op_nodes(g)
    cost = fragment_cost(g, ops)
    tokens = _tokens(g)
    per_token = cost.flops / tokens
    act = sum(g.nodes[n]["output_bytes"] for n in ops)
    context = tokens  # decode is costed at the example's context length
    prefill = Phase(
        name="prefill", unit="token", flops=per_token, weight_bytes=cost.weight_bytes,
        activation_bytes=act // tokens, kv_bytes_per_token=kv_bytes_per_token,
        arithmetic_intensity=cost.flops / (cost.weight_bytes + act + kv_bytes_per_token * tokens),
        note=f"{tokens} prompt tokens in one step: weights are read once for all of them (compute-bound)",
    )
    decode_bytes = cost.weight_bytes + kv_bytes_per_token * context + act // tokens
    decode = Phase(
        name="decode", unit="token", flops=per_token, weight_bytes=cost.weight_bytes,
        activation_bytes=act // tokens, kv_bytes_per_token=kv_bytes_per_token,
        arithmetic_intensity=per_token / decode_bytes,
        note=f"one token per step at batch 1 and {context} tokens of context: every step reads all weights and "
        "the request's KV cache (memory-bound; batch sequences to raise intensity)",
    )
    return [prefill, decode]


def _tokens(g: nx.DiGraph) -> int:
    """Tokens in the example: batch x sequence of the (last) text input, e.g. decoder_input_ids."""
    texts = [n for n, m in input_modalities(g).items() if m == TEXT]
    shape = g.graph["inputs"][texts[-1]].shape if texts else (1,)
    n = 1
    for s in shape:
        n *= s
    return max(n, 1)


def _vision(g: nx.DiGraph) -> list[Phase]:
    ops = op_nodes(g)
    spatial = [i for i, n in enumerate(ops) if g.nodes[n]["kind"] in _SPATIAL]
    cut = spatial[-1] + 1 if spatial else len(ops)
    phases = [_phase(g, "backbone", ops[:cut], "feature extraction over the image: conv / attention stages")]
    if cut < len(ops):
        phases.append(_phase(g, "head", ops[cut:], "pooling and classifier over the final features"))
    return phases


def _branches(g: nx.DiGraph) -> list[Phase]:
    r = reach(g)
    ops = op_nodes(g)
    phases = []
    for m in PRIMARY:
        nodes = [n for n in ops if r[n] == frozenset({m})]
        if nodes:
            phases.append(_phase(g, f"branch:{m}", nodes, f"{m} encoder: independent of the other inputs"))
    fused = [n for n in ops if len(r[n]) > 1]
    if fused:
        points = meeting_points(g)
        where = g.nodes[points[0]]["module"] or "the top level" if points else "the top level"
        phases.append(_phase(g, "fusion", fused, f"the branches meet at {where}; this phase is that point and "
                                                 "everything after it"))
    rest = [n for n in ops if not r[n]]
    if rest and not phases:
        phases.append(_phase(g, "forward", rest, "input-independent ops"))
    return phases


def _recsys(g: nx.DiGraph) -> list[Phase]:
    lookups = set(nodes_of(g, "embedding", "embedding_bag"))
    ops = op_nodes(g)
    sparse = [n for n in ops if n in lookups]
    dense = [n for n in ops if n not in lookups]
    return [
        _phase(g, "sparse", sparse, "embedding lookups: memory-bound, sized by the tables"),
        _phase(g, "dense", dense, "feature interaction and MLPs: compute-bound at large batch"),
    ]


def _phase(g: nx.DiGraph, name: str, nodes: list[str], note: str) -> Phase:
    cost = fragment_cost(g, nodes)
    act = sum(g.nodes[n]["output_bytes"] for n in nodes)
    modules = sorted({g.nodes[n]["module"].split(".")[0] for n in nodes} - {""})
    return Phase(
        name=name, unit="request", flops=cost.flops, weight_bytes=cost.weight_bytes, activation_bytes=act,
        arithmetic_intensity=cost.intensity, modules=modules, note=note,
    )

