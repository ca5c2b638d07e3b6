"""Coarse blocks the planner places: entries of repeated module stacks (decoder layers, ResNet stages, encoder
layers) and the top-level modules around them (embeddings, final norm, heads).

A stack is a module path `P` with numbered children `P.0, P.1, ...`; each node belongs to the entry of the
outermost stack on its module path, else to its top-level module (two path components).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import networkx as nx

from genie.semantic.capture.ir import op_nodes
from genie.semantic.modality import reach
from genie.semantic.profile import Block

_LOOKUPS = frozenset({"embedding", "embedding_bag"})


@dataclass(frozen=True, slots=True)
class BlockGroup:
    name: str
    stack: str  # the stack path this block is an entry of, "" when it is not a stack entry
    nodes: tuple[str, ...]  # in execution order


def group_blocks(g: nx.DiGraph) -> list[BlockGroup]:
    cached = g.graph.get("_blocks")
    if cached is None:
        ops = op_nodes(g)
        stacks = _stacks({g.nodes[n]["module"] for n in ops})
        members: dict[tuple[str, str], list[str]] = defaultdict(list)
        for n in ops:
            members[_block_of(g.nodes[n]["module"], stacks)].append(n)
        cached = [BlockGroup(name, stack, tuple(nodes)) for (name, stack), nodes in members.items()]
        cached.sort(key=lambda b: g.nodes[b.nodes[0]]["index"])
        g.graph["_blocks"] = cached
    return cached


def _stacks(paths: set[str]) -> set[str]:
    entries: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        parts = p.split(".")
        for i in range(1, len(parts)):
            if parts[i].isdigit():
                entries[".".join(parts[:i])].add(parts[i])
    return {prefix for prefix, ids in entries.items() if len(ids) >= 2}


def _block_of(path: str, stacks: set[str]) -> tuple[str, str]:
    parts = path.split(".") if path else []
    for i in range(1, len(parts)):
        if parts[i].isdigit() and ".".join(parts[:i]) in stacks:
            return ".".join(parts[: i + 1]), ".".join(parts[:i])
    return ".".join(parts[:2]), ""


def uniform_stacks(g: nx.DiGraph) -> set[str]:
    """Stacks whose entries are all the same module type: repeated layers, not a Sequential of mixed parts."""
    types = g.graph["module_types"]
    entries: dict[str, set[str]] = defaultdict(set)
    for b in group_blocks(g):
        if b.stack:
            entries[b.stack].add(types.get(b.name, ""))
    return {stack for stack, kinds in entries.items() if len(kinds) == 1}


def make_blocks(g: nx.DiGraph, layer_stacks: set[str], multimodal: bool) -> list[Block]:
    """Blocks with costs. `layer_stacks` name the stacks whose entries are layers (others are 'stage')."""
    groups = group_blocks(g)
    owner = {n: b.name for b in groups for n in b.nodes}
    order = {b.name: i for i, b in enumerate(groups)}
    weights = g.graph["params"]
    buffers = g.graph["buffers"]
    last_layer = max((i for i, b in enumerate(groups) if b.stack in layer_stacks), default=-1)
    r = reach(g) if multimodal else {}
    counters: dict[str, int] = defaultdict(int)
    called: set[str] = set()
    blocks = []
    for i, b in enumerate(groups):
        params = {p for n in b.nodes for p in g.nodes[n]["params"] if p not in buffers}
        out = sum(g.nodes[n]["output_bytes"] for n in b.nodes
                  if any(owner.get(s) not in (b.name, None) for s in g.successors(n)))
        feeds = sorted({owner[s] for n in b.nodes for s in g.successors(n) if owner.get(s) not in (b.name, None)},
                       key=lambda x: order[x])
        kind = _kind(g, b, layer_stacks, i > last_layer >= 0 and bool(params))
        branch = ""
        if multimodal:
            mods = frozenset().union(*(r[n] for n in b.nodes))
            branch = next(iter(mods)) if len(mods) == 1 else ""
            kind = "fusion" if len(mods) > 1 else kind
        index = -1
        if b.stack:
            index = counters[b.stack]
            counters[b.stack] += 1
        blocks.append(Block(
            name=b.name, kind=kind, flops=sum(g.nodes[n]["flops"] for n in b.nodes),
            param_bytes=sum(weights[p].nbytes for p in params), output_bytes=out, branch=branch, index=index,
            feeds=feeds, ops=len(b.nodes), modules=_new_calls(g, b, called), traffic_bytes=_traffic(g, b),
            lookups=sum(g.nodes[n]["kind"] in _LOOKUPS for n in b.nodes),
        ))
    return blocks


def _traffic(g: nx.DiGraph, b: BlockGroup) -> int:
    """Activation bytes the block's ops read and write (each op's traffic less the weights it reads)."""
    total = 0
    for n in b.nodes:
        d = g.nodes[n]
        total += max(d["bytes_moved"] - (0 if d["kind"] in _LOOKUPS else d["param_bytes"]), 0)
    return total


def _new_calls(g: nx.DiGraph, b: BlockGroup, called: set[str]) -> int:
    """Module calls of the block not yet counted: every prefix of its nodes' module paths, the root included."""
    before = len(called)
    for n in b.nodes:
        parts = g.nodes[n]["module"].split(".") if g.nodes[n]["module"] else []
        called.update(".".join(parts[:i]) for i in range(len(parts) + 1))
    return len(called) - before


def _kind(g: nx.DiGraph, b: BlockGroup, layer_stacks: set[str], after_layers: bool) -> str:
    heavy = {g.nodes[n]["kind"] for n in b.nodes} & {"matmul", "conv", "sdpa", "embedding", "embedding_bag"}
    if heavy and heavy <= {"embedding", "embedding_bag"}:
        return "embedding"
    if b.stack in layer_stacks:
        return "layer"
    if after_layers:
        return "head"
    return "stage" if b.stack else "other"
