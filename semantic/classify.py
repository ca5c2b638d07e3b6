"""Workload classification from structural evidence: input modalities, attention masks, heads, tables.

Each workload type gets a score in [0, 1] from the evidence that supports it; the best wins and its confidence
is lowered by how close the runner-up came. Every piece of evidence becomes a line of the explanation.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from genie.semantic.llm import lm_head
from genie.semantic.modality import AUDIO, DENSE, IMAGE, SPARSE, TEXT, input_modalities, meeting_points
from genie.semantic.patterns.attention import find_attention
from genie.semantic.patterns.base import PatternMatch
from genie.semantic.profile import WorkloadType as W
from genie.semantic.walk import nodes_of


@dataclass(frozen=True, slots=True)
class Classification:
    workload: W
    confidence: float
    explanation: list[str]
    scores: dict[str, float]


def classify(g: nx.DiGraph, matches: dict[str, PatternMatch]) -> Classification:
    mods = input_modalities(g)
    present = set(mods.values())
    lines = [f"input {n}: {list(g.graph['inputs'][n].shape)} {g.graph['inputs'][n].dtype} -> {m}" for n, m in mods.items()]
    lines += [f"no {m} input" for m in (IMAGE, AUDIO) if m not in present]
    sites = find_attention(g)
    # A causal mask relates a sequence to itself, so a causal site is self-attention even where the Q and K
    # projections could not be traced back to one hidden state (fused QKV split by gathers).
    causal_self = [s for s in sites if s.causal]
    bidir = [s for s in sites if not s.causal and s.self_attention]
    cross = [s for s in sites if not s.causal and not s.self_attention]
    head = lm_head(g)
    bags = nodes_of(g, "embedding_bag")
    tables = {g.nodes[n]["params"][0] for n in nodes_of(g, "embedding", "embedding_bag") if g.nodes[n]["params"]}
    scores: dict[W, float] = {}
    evidence: dict[W, list[str]] = {w: [] for w in W}

    def add(w: W, points: float, why: str) -> None:
        scores[w] = scores.get(w, 0.0) + points
        evidence[w].append(why)

    if AUDIO in present:
        add(W.AUDIO, 0.7, "audio input (waveform or spectrogram features into a 1-D conv front end)")
        if sites:
            add(W.AUDIO, 0.2, f"{len(sites)} attention blocks over audio frames")
    if IMAGE in present and TEXT in present:
        add(W.MULTIMODAL, 0.6, "image and text inputs")
        if meeting_points(g):
            add(W.MULTIMODAL, 0.35, "the image and text branches are fused inside the model")
    if IMAGE in present:
        add(W.VISION, 0.6, "image input")
        if nodes_of(g, "conv") or sites:
            add(W.VISION, 0.2, "convolution or attention over the image")
        if present <= {IMAGE}:
            add(W.VISION, 0.2, "image is the only input")
        else:
            scores[W.VISION] *= 0.5  # an image branch of a model that also takes other inputs
    if SPARSE in present or bags:
        add(W.RECSYS, 0.5, f"sparse categorical ids into {len(tables)} embedding tables ({len(bags)} pooled lookups)")
        if DENSE in present or "mlp" in matches:
            add(W.RECSYS, 0.3, "dense features through an MLP")
        if len(tables) >= 2:
            add(W.RECSYS, 0.2, "several embedding tables")
    if TEXT in present:
        if causal_self:
            add(W.LLM, 0.3, "token input")
            add(W.LLM, 0.35, f"{len(causal_self)} attention blocks with causal mask")
            if head:
                tied = ", tied to the token embedding" if head.tied else ""
                add(W.LLM, 0.25, f"LM head producing {head.vocab}-way next-token logits{tied}")
            if "kv_cache" in matches:
                add(W.LLM, 0.1, "KV-cache update pattern")
            if cross:
                evidence[W.LLM].append(f"encoder-decoder: {len(cross)} cross-attention blocks")
        if bidir or not causal_self:
            add(W.ENCODER, 0.3, "token input")
            if bidir:
                add(W.ENCODER, 0.4, f"{len(bidir)} bidirectional attention blocks (no causal mask)")
            if not causal_self:
                add(W.ENCODER, 0.3, "no causal self-attention: the model encodes, it does not generate")
    if present & {IMAGE, AUDIO}:
        for w in (W.LLM, W.ENCODER):
            if w in scores:
                scores[w] *= 0.5  # the text side of a speech or vision-language model
    if SPARSE in present and TEXT in present:
        for w in (W.LLM, W.ENCODER):
            if w in scores:
                scores[w] *= 0.5  # an id sequence beside categorical ids or scored candidates: a user history
    if not scores:
        add(W.UNKNOWN, 0.5, "no recognised input modality or structure")
    return _decide(scores, evidence, lines)


def _decide(scores: dict[W, float], evidence: dict[W, list[str]], lines: list[str]) -> Classification:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0].value))
    best, best_score = ranked[0][0], min(ranked[0][1], 1.0)
    second = min(ranked[1][1], 1.0) if len(ranked) > 1 else 0.0
    confidence = round(best_score * (1 - 0.5 * second / best_score), 3) if best_score else 0.0
    lines = [f"workload {best.value}: " + "; ".join(evidence[best]), *lines]
    if len(ranked) > 1:
        lines.append(f"runner-up {ranked[1][0].value} ({second:.2f}): " + "; ".join(evidence[ranked[1][0]]))
    return Classification(best, confidence, lines, {w.value: round(s, 3) for w, s in ranked})
