"""Small queries over the graph IR that pattern matchers and the classifier share."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import networkx as nx

from genie.semantic.capture.ir import order

Graph = nx.DiGraph

PASS_THROUGH = frozenset({"view"})
# Ops that rotary embeddings, scaling and masking put between a projection and attention.
ELEMENTWISE_LIKE = frozenset({"view", "elementwise", "concat", "mask", "activation"})


def by_kind(g: Graph) -> dict[str, list[str]]:
    """Op nodes grouped by kind, in execution order. Computed once per graph (the IR is not edited after)."""
    cached = g.graph.get("_by_kind")
    if cached is None or cached[0] != g.number_of_nodes():
        table: dict[str, list[str]] = defaultdict(list)
        for n in order(g):
            table[g.nodes[n]["kind"]].append(n)
        cached = (g.number_of_nodes(), dict(table))
        g.graph["_by_kind"] = cached
    return cached[1]


def nodes_of(g: Graph, *kinds: str) -> list[str]:
    table = by_kind(g)
    if len(kinds) == 1:
        return table.get(kinds[0], [])
    return sorted((n for k in kinds for n in table.get(k, [])), key=lambda n: g.nodes[n]["index"])


def is_linear(g: Graph, n: str) -> bool:
    """A matmul against a weight: nn.Linear, Conv1D (GPT-2), or a decomposed addmm/mm."""
    d = g.nodes[n]
    return d["kind"] == "matmul" and bool(d["params"])




def source(g: Graph, n: str, through: frozenset[str] = PASS_THROUGH) -> str:
    """Walk back from n through nodes of the `through` kinds (first data input) to the producing node."""
    seen = 0
    while g.nodes[n]["kind"] in through and g.nodes[n]["inputs"] and seen < 64:
        n = g.nodes[n]["inputs"][0]
        seen += 1
    return n


def consumers(g: Graph, n: str, through: frozenset[str] = PASS_THROUGH) -> list[str]:
    """Nodes that consume n's value, looking through views."""
    out, stack, seen = [], list(g.successors(n)), set()
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.add(m)
        if g.nodes[m]["kind"] in through:
            stack.extend(g.successors(m))
        else:
            out.append(m)
    return sorted(out, key=lambda m: g.nodes[m]["index"])




def module_prefix(paths: Iterable[str]) -> str:
    """Longest common dotted prefix of module paths."""
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    common = parts[0]
    for p in parts[1:]:
        i = 0
        while i < min(len(common), len(p)) and common[i] == p[i]:
            i += 1
        common = common[:i]
    return ".".join(common)




def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
