"""Input modalities and how they flow: which inputs are text, image, audio, sparse ids or dense features,
and which modalities reach each node (so branches and fusion points can be found).

Structure decides first (what the input feeds: conv2d, conv1d, a token embedding, EmbeddingBag tables, a
linear); the input's name only breaks ties.
"""

from __future__ import annotations

import re

import networkx as nx

from genie.semantic.capture.ir import order
from genie.semantic.walk import numel

TEXT, IMAGE, AUDIO, SPARSE, DENSE, UNKNOWN = "text", "image", "audio", "sparse", "dense", "unknown"
PRIMARY = (TEXT, IMAGE, AUDIO, SPARSE, DENSE)
MEDIA = frozenset({TEXT, IMAGE, AUDIO})
_HEAVY = frozenset({"conv", "matmul", "embedding", "embedding_bag", "sdpa", "layer_norm", "rms_norm", "batch_norm"})
_NAME_HINTS = (
    (re.compile(r"pixel|image|img|vision|photo"), IMAGE),
    (re.compile(r"audio|wave|speech|mel|input_features|input_values|spectro"), AUDIO),
    (re.compile(r"sparse|categor|offsets|indices|\bcat_|item|user|candidate|history|click"), SPARSE),
    (re.compile(r"input_ids|token|text|question|word|caption"), TEXT),
    (re.compile(r"dense|numeric|continuous"), DENSE),
)
_FLOAT = ("float", "bfloat")


def input_modalities(g: nx.DiGraph) -> dict[str, str]:
    cached = g.graph.get("_modalities")
    if cached is None:
        cached = {name: _classify(g, name) for name in g.graph["inputs"]}
        g.graph["_modalities"] = cached
    return cached


def reach(g: nx.DiGraph) -> dict[str, frozenset[str]]:
    """For every node, the primary modalities whose inputs it depends on."""
    cached = g.graph.get("_reach")
    if cached is None:
        mods = input_modalities(g)
        cached = {}
        nodes = g.nodes
        for n in order(g):
            if nodes[n]["kind"] == "input":
                cached[n] = frozenset({mods[n]}) if mods[n] in PRIMARY else frozenset()
            else:
                cached[n] = frozenset().union(*(cached[p] for p in g.predecessors(n)))
        g.graph["_reach"] = cached
    return cached


def _classify(g: nx.DiGraph, name: str) -> str:
    info = g.graph["inputs"][name]
    heavy = _first_heavy(g, name)
    kinds = {g.nodes[h]["kind"] for h in heavy}
    hinted = next((m for rx, m in _NAME_HINTS if rx.search(name.lower())), None)
    if info.dtype.startswith(_FLOAT):
        return _float_input(g, info.shape, heavy, kinds, hinted)
    if "embedding_bag" in kinds:
        return SPARSE
    tables = {g.nodes[h]["params"][0] for h in heavy if g.nodes[h]["kind"] == "embedding" and g.nodes[h]["params"]}
    if len(tables) >= 2 and hinted != TEXT:
        return SPARSE  # one id column per table: categorical features
    if tables and numel(info.shape[1:]) <= 1 and hinted != TEXT:
        return SPARSE  # one id per example (a user or item id), not a token sequence
    if tables and _scored(g, name, heavy):
        return SPARSE  # candidate ids whose embeddings are scored against the model's state, not encoded
    if tables and len(info.shape) == 2 and info.shape[-1] > 1:
        return hinted if hinted in (TEXT, SPARSE) else TEXT
    return hinted or UNKNOWN


def _scored(g: nx.DiGraph, name: str, lookups: list[str], depth: int = 4) -> bool:
    """An embedding lookup of this input consumed, through views, by a product with an activation computed from
    other inputs: the ids are candidates scored against the model's state (a dot-product score), not encoded."""
    stack = [(n, 0) for n in lookups if g.nodes[n]["kind"] == "embedding"]
    while stack:
        n, d = stack.pop()
        for m in g.successors(n):
            node = g.nodes[m]
            if node["kind"] == "matmul" and not node["params"] and _from_other_inputs(g, node["inputs"], n, name):
                return True
            if node["kind"] == "view" and d < depth:
                stack.append((m, d + 1))
    return False


def _from_other_inputs(g: nx.DiGraph, operands: tuple[str, ...], mine: str, name: str) -> bool:
    others = set(g.graph["inputs"]) - {name}
    return any(others & nx.ancestors(g, x) for x in operands if x != mine)


def _float_input(g: nx.DiGraph, shape: tuple[int, ...], heavy: list[str], kinds: set[str], hinted: str | None) -> str:
    conv_ranks = {len(g.nodes[h]["arg_shapes"][1]) for h in heavy if g.nodes[h]["kind"] == "conv"
                  and len(g.nodes[h]["arg_shapes"]) > 1}
    if 4 in conv_ranks and _spectrogram(shape, hinted):
        return AUDIO
    if 4 in conv_ranks or (len(shape) == 4 and hinted == IMAGE):
        return IMAGE
    if 3 in conv_ranks or hinted == AUDIO:
        return AUDIO
    if len(shape) == 4 and shape[1] in (1, 3, 4) and numel(shape[2:]) >= 64:
        return IMAGE
    if "matmul" in kinds and len(shape) == 2:
        return hinted if hinted in (DENSE, AUDIO, IMAGE) else DENSE
    return hinted or UNKNOWN


def _spectrogram(shape: tuple[int, ...], hinted: str | None) -> bool:
    """A time x frequency map into a 2-D conv: [B, frames, bins] with no channel dim (AST), or one channel named as
    audio. A square channel-less map is more likely a grayscale image."""
    if len(shape) == 3:
        return hinted == AUDIO or (hinted is None and shape[1] != shape[2])
    return len(shape) == 4 and shape[1] == 1 and hinted == AUDIO


def _first_heavy(g: nx.DiGraph, start: str, limit: int = 64) -> list[str]:
    """The first heavy ops (conv, matmul, embedding...) reached from an input, through light ops."""
    found, stack, seen = [], list(g.successors(start)), set()
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if g.nodes[n]["kind"] in _HEAVY:
            found.append(n)
        elif g.nodes[n]["kind"] != "output":
            stack.extend(g.successors(n))
    return found


def meeting_points(g: nx.DiGraph) -> list[str]:
    """Nodes where two media modalities (text, image, audio) first meet: inputs carrying disjoint sets."""
    r = reach(g)
    points = []
    for n in order(g):
        if len(r[n] & MEDIA) < 2 or g.nodes[n]["kind"] == "output":
            continue
        sets = [r[p] & MEDIA for p in g.predecessors(n) if r[p] & MEDIA]
        if any(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :]):
            points.append(n)
    return points
