"""Costs of sets of profile blocks (non-LLM plans): memory, roofline time, and the bytes crossing fragments."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from genie.semantic.cluster import WorkerSpec
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import PlanFragment, Transfer
from genie.semantic.profile import Block, Profile

LAUNCH_S = 5e-6  # a step costs at least one kernel launch, even for a block that does almost nothing
# A stateless worker checks each lookup's ids against its table before the lookup runs
# (workers/stateless/lookups.py): a hook call, aminmax, two comparisons and two reads back, each an op.
GUARD_OPS = 6
# A row shard of a table (workers/stateless/split.py RowShard) masks the ids outside its rows around the lookup:
# two comparisons, an and, a subtraction, zeros, a where, then an unsqueeze, a cast and a multiply.
SHARD_OPS = 9


def row_shard(block: Block, start: int, end: int) -> Block:
    """Rows [start, end) of an embedding table block: their weights (a row is one lookup's output) and the
    masking ops a shard runs beside the lookup."""
    return dataclasses.replace(block, name=f"{block.name}[{start}:{end}]", param_bytes=(end - start) *
                               block.output_bytes, ops=block.ops + SHARD_OPS)


def memory(blocks: list[Block], options: PlanOptions) -> int:
    """Weights plus room for a batch of the largest activation the blocks hand on (double-buffered)."""
    act = max((b.output_bytes for b in blocks), default=0)
    return sum(b.param_bytes for b in blocks) + 2 * options.batch * act


def whole_memory(profile: Profile, options: PlanOptions) -> int:
    """The whole model: unique weights (tied weights once), plus the activation room."""
    act = max((b.output_bytes for b in profile.blocks), default=0)
    return profile.cost.param_bytes + 2 * options.batch * act


def time(blocks: list[Block], worker: WorkerSpec, batch: int) -> float:
    """One call of a batch through the blocks on `worker`: the roofline of their arithmetic and traffic, plus what
    their ops and module calls cost to dispatch whatever their size (which paces small models), plus what a
    call pays once (a forward after a pause starts cold), never below one kernel launch."""
    return max(roofline(blocks, worker, batch) + dispatch(blocks, worker) + worker.call_s, LAUNCH_S)


def roofline(blocks: list[Block], worker: WorkerSpec, batch: int) -> float:
    """Arithmetic time plus traffic time, one after the other rather than the larger of the two: the small
    unfused ops these blocks are made of do not overlap their memory traffic with their arithmetic. Weights are
    read once a step, except a lookup's table: only the rows it gathers, which its traffic already counts."""
    flops = sum(b.flops for b in blocks) * batch
    weights = sum(b.param_bytes for b in blocks if not b.lookups)
    moved = weights + batch * sum(b.traffic_bytes or 2 * b.output_bytes for b in blocks)
    return flops / worker.flops + moved / worker.bandwidth


def dispatch(blocks: list[Block], worker: WorkerSpec) -> float:
    """Seconds of per-op and per-module-call overhead: the same at any batch size."""
    ops = sum(b.ops + GUARD_OPS * b.lookups for b in blocks)
    return ops * worker.op_s + sum(b.modules for b in blocks) * worker.module_s


def crossing(profile: Profile, owner: dict[str, str]) -> list[Transfer]:
    """Transfers for every block output consumed by a block of another fragment (`owner`: block -> fragment)."""
    sent: dict[tuple[str, str], int] = defaultdict(int)
    what: dict[tuple[str, str], list[str]] = defaultdict(list)
    for b in profile.blocks:
        src = owner.get(b.name)
        for dst in sorted({owner[f] for f in b.feeds if f in owner and owner[f] != src}):
            sent[(src, dst)] += b.output_bytes
            what[(src, dst)].append(b.name or "<top level>")
    return [
        Transfer(src, dst, "activations", 0, n, f"outputs of {', '.join(what[(src, dst)][:3])} "
                 f"({n} B per request) feed {dst}")
        for (src, dst), n in sorted(sent.items())
    ]


def fragment(fid: str, worker: WorkerSpec, blocks: list[Block], replica: int, stage: int, role: str,
             reason: str, options: PlanOptions) -> PlanFragment:
    kinds = {b.kind for b in blocks}
    return PlanFragment(
        fragment_id=fid, worker=worker.name, replica=replica, stage=stage, layer_start=None, layer_end=None,
        has_embedding="embedding" in kinds or "sparse" in kinds, has_head="head" in kinds,
        nodes=[b.name for b in blocks], reason=reason, role=role,
        param_bytes=sum(b.param_bytes for b in blocks), memory_bytes=memory(blocks, options),
        flops=sum(b.flops for b in blocks),
    )
