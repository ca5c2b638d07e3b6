"""The cost model: FLOPs, bytes moved and arithmetic intensity per node and per fragment, and a roofline step
time for a device described by its peak FLOP/s and memory bandwidth."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from genie.semantic.capture.ir import attrs, op_nodes
from genie.semantic.profile import CostSummary

_LOOKUPS = frozenset({"embedding", "embedding_bag"})


@dataclass(frozen=True, slots=True)
class FragmentCost:
    flops: float
    weight_bytes: int  # parameter bytes read once per step (embedding tables: only the rows gathered)
    resident_bytes: int  # parameter bytes that must live on the device
    bytes_moved: int  # weights + activations read and written, unfused
    input_bytes: int  # activations entering the fragment from outside it
    output_bytes: int  # activations leaving it

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0

    def step_time(self, flops_per_s: float, bandwidth: float) -> float:
        return step_time(self.flops, self.bytes_moved, flops_per_s, bandwidth)


def step_time(flops: float, bytes_moved: float, flops_per_s: float, bandwidth: float) -> float:
    """Roofline: a step is bound by compute or by memory traffic, whichever takes longer (seconds)."""
    return max(flops / flops_per_s, bytes_moved / bandwidth)


def node_cost(g: nx.DiGraph, n: str) -> tuple[float, int, float]:
    """(FLOPs, bytes moved, arithmetic intensity) of one node."""
    d = g.nodes[n]
    return d["flops"], d["bytes_moved"], d["flops"] / d["bytes_moved"] if d["bytes_moved"] else 0.0


def fragment_cost(g: nx.DiGraph, nodes: Iterable[str]) -> FragmentCost:
    table = attrs(g)
    members = set(nodes)
    weights, buffers = g.graph["params"], g.graph["buffers"]
    read, resident, gathered = set(), set(), 0
    flops, moved, inp, out = 0.0, 0, 0, 0
    for n in members:
        d = table[n]
        flops += d["flops"]
        moved += d["bytes_moved"]
        params = [p for p in d["params"] if p not in buffers]
        resident.update(params)
        if d["kind"] in _LOOKUPS:
            gathered += d["output_bytes"]
        else:
            read.update(params)
        inp += sum(table[p]["output_bytes"] for p in g.predecessors(n) if p not in members)
        if any(s not in members for s in g.successors(n)):
            out += d["output_bytes"]
    weight_bytes = sum(weights[p].nbytes for p in read) + gathered
    return FragmentCost(flops, weight_bytes, sum(weights[p].nbytes for p in resident), moved, inp, out)


def summarize(g: nx.DiGraph) -> CostSummary:
    nodes = attrs(g)
    ops = op_nodes(g)
    flops = sum(nodes[n]["flops"] for n in ops)
    moved = sum(nodes[n]["bytes_moved"] for n in ops)
    return CostSummary(
        flops=flops,
        param_bytes=g.graph["param_bytes"],
        activation_bytes=sum(nodes[n]["output_bytes"] for n in ops),
        bytes_moved=moved,
        arithmetic_intensity=flops / moved if moved else 0.0,
        dtype_bytes=g.graph["dtype_bytes"],
    )
