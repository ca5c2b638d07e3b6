"""The fusion partitioner: which ops could run as one kernel.

Three rules, applied in this order:
1. attention chains (matmul -> scale/mask -> softmax -> matmul, or one SDPA op) become one flash-style kernel;
2. parallel Q/K/V projections reading the same input merge into one GEMM, so the input is read once;
3. greedy sequential fusion: walking in execution order, a light op (elementwise, activation, view, mask) joins
   the group of an input whose only consumer it is; a heavy op may absorb a group of light ops before it.
A group holds at most one heavy op (except the seeded attention / QKV groups), and a merge never creates a
cycle between groups: every other input of the op must be finished before the group starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from genie.semantic.capture.ir import op_nodes
from genie.semantic.capture.ops import FREE_KINDS
from genie.semantic.patterns.attention import find_attention
from genie.semantic.patterns.qkv import parallel_qkv

LIGHT = frozenset({"elementwise", "activation", "view", "mask", "constant", "copy"})


@dataclass(frozen=True, slots=True)
class FusionReport:
    subgraphs: int  # kernels after fusion (groups with at least one op that is not a pure view)
    avg_fusion_size: float  # ops per kernel
    parallel_qkv_fusions: int
    attention_fusions: int
    redundant_read_bytes_saved: int  # input bytes no longer read once per Q/K/V projection
    intermediate_bytes_saved: int  # bytes never written to and read back from memory inside fused groups
    groups: list[tuple[str, ...]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.subgraphs} kernels (avg {self.avg_fusion_size:.1f} ops each), {self.attention_fusions} "
                f"attention fusions, {self.parallel_qkv_fusions} parallel-QKV merges saving "
                f"{self.redundant_read_bytes_saved} B of input reads, {self.intermediate_bytes_saved} B of "
                "intermediates kept on chip")


class _Groups:
    """Union-find over nodes; each root tracks its index span and how many heavy ops it holds."""

    def __init__(self, g: nx.DiGraph, nodes: list[str]) -> None:
        self.parent = {n: n for n in nodes}
        self.lo = {n: g.nodes[n]["index"] for n in nodes}
        self.hi = dict(self.lo)
        self.heavy = {n: int(g.nodes[n]["kind"] not in LIGHT) for n in nodes}
        self.seeded: set[str] = set()

    def find(self, n: str) -> str:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        self.parent[rb] = ra
        self.lo[ra], self.hi[ra] = min(self.lo[ra], self.lo[rb]), max(self.hi[ra], self.hi[rb])
        self.heavy[ra] += self.heavy[rb]
        if rb in self.seeded:
            self.seeded.add(ra)
        return ra


def partition(graph: nx.DiGraph, attention_patterns: bool = True) -> FusionReport:
    """Partition `graph` into fused kernels; `attention_patterns=False` runs only the greedy rule (a baseline)."""
    nodes = op_nodes(graph)
    if not nodes:
        raise ValueError("partition needs a graph with at least one operation; this graph is empty")
    groups = _Groups(graph, nodes)
    attention = qkv = saved_reads = 0
    if attention_patterns:
        attention, qkv, saved_reads = _seed(graph, groups)
    for n in nodes:
        _greedy(graph, groups, n)
    return _report(graph, groups, nodes, attention, qkv, saved_reads)


def _seed(g: nx.DiGraph, groups: _Groups) -> tuple[int, int, int]:
    attention = 0
    for site in find_attention(g):
        for n in site.core[1:]:
            groups.union(site.core[0], n)
        groups.seeded.add(groups.find(site.core[0]))
        attention += 1
    merges, saved = 0, 0
    for projs in parallel_qkv(g):
        for p in projs[1:]:
            groups.union(projs[0], p)
        groups.seeded.add(groups.find(projs[0]))
        shared = g.nodes[projs[0]]["inputs"][0]
        saved += (len(projs) - 1) * g.nodes[shared]["output_bytes"]
        merges += 1
    return attention, merges, saved


def _greedy(g: nx.DiGraph, groups: _Groups, n: str) -> None:
    d = g.nodes[n]
    light = d["kind"] in LIGHT
    for src in reversed(d["inputs"]):  # the latest producer first: it is the one still in registers
        if src not in groups.parent or groups.find(src) == groups.find(n):
            continue
        if sum(1 for _ in g.successors(src)) != 1 and d["kind"] != "view":
            continue
        target = groups.find(src)
        if not light and (groups.heavy[target] or target in groups.seeded):
            continue  # one heavy op per kernel; a light prologue may join a heavy op
        if _acyclic(g, groups, n, target):
            groups.union(target, n)
            return


def _acyclic(g: nx.DiGraph, groups: _Groups, n: str, target: str) -> bool:
    """Joining n to `target` is safe if each other input of n is in target or finished before target starts."""
    for other in g.nodes[n]["inputs"]:
        if other not in groups.parent:
            continue
        r = groups.find(other)
        if r != target and groups.hi[r] >= groups.lo[target]:
            return False
    return True


def _report(g: nx.DiGraph, groups: _Groups, nodes: list[str], attention: int, qkv: int, saved: int) -> FusionReport:
    members: dict[str, list[str]] = {}
    for n in nodes:
        members.setdefault(groups.find(n), []).append(n)
    kernels = [tuple(m) for m in members.values() if any(g.nodes[n]["kind"] not in FREE_KINDS for n in m)]
    kept = 0
    for m in members.values():
        inside = set(m)
        for n in m:
            succ = list(g.successors(n))
            if succ and all(s in inside for s in succ) and g.nodes[n]["kind"] not in FREE_KINDS:
                kept += 2 * g.nodes[n]["output_bytes"]  # one write and one read avoided
    size = sum(len(k) for k in kernels) / len(kernels) if kernels else 0.0
    return FusionReport(len(kernels), round(size, 3), qkv, attention, saved, kept, kernels)
