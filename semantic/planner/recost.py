"""A plan's fragments re-costed on a (calibrated) cluster: step time at a batch size, and the bytes a request
brings to each fragment; and a served plan re-costed on what serving measured, against the other strategies.
Non-LLM plans only: their fragments name the profile blocks they run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.options import PINNABLE, PlanOptions
from genie.semantic.planner.types import Plan, PlanFragment
from genie.semantic.profile import Block, Profile

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


def blocks_of(profile: Profile, fragment: PlanFragment) -> list[Block]:
    """The profile blocks the fragment runs, and a row shard ("tables.2[0:120]") as the rows of its table."""
    names = set(fragment.nodes)
    by_name = {b.name: b for b in profile.blocks}
    shards = []
    for n in sorted(names - set(by_name)):
        table, _, rows = n.partition("[")
        start, _, end = rows.rstrip("]").partition(":")
        if table in by_name and start.isdigit() and end.isdigit():
            shards.append(bc.row_shard(by_name[table], int(start), int(end)))
    return [b for b in profile.blocks if b.name in names] + shards


def step_time(profile: Profile, cluster: ClusterSpec, fragment: PlanFragment, batch: int) -> float:
    """Seconds of one call of `batch` requests through the fragment on its worker (block_costs.time)."""
    return bc.time(blocks_of(profile, fragment), cluster.worker(fragment.worker), batch)


def step_parts(profile: Profile, cluster: ClusterSpec, fragment: PlanFragment, batch: int) -> dict[str, float]:
    """What step_time adds up, so a report can say which part is off: the roofline of the arithmetic and
    traffic at `batch`, the ops' and module calls' dispatch, and what the call pays once."""
    blocks, worker = blocks_of(profile, fragment), cluster.worker(fragment.worker)
    return {"roofline_s": bc.roofline(blocks, worker, batch), "dispatch_s": bc.dispatch(blocks, worker),
            "call_s": worker.call_s}


def input_bytes(profile: Profile, names: set[str] | None = None) -> int:
    """Bytes per request of the model's inputs (all, or those named), from the profile's example shapes."""
    total = 0
    for i in profile.inputs:
        if names is None or i.name in names:
            total += math.prod(i.shape[1:]) * _DTYPE_BYTES.get(i.dtype, 4)
    return total


MISPREDICTED = 0.5  # a worker whose measured step times are off by more than this fraction gets re-costed
CLEAR_WIN = 0.25  # another strategy must promise this much more throughput to be worth a switch


@dataclass(frozen=True, slots=True)
class Replan:
    """A served plan re-costed on what serving measured: which workers were mispredicted, and what each
    candidate strategy promises once their speed is corrected."""

    mismatch: dict[str, float]  # worker -> measured / predicted step time over its fragments
    candidates: dict[str, float]  # strategy -> predicted throughput on the corrected cluster (requests/s)
    refused: dict[str, str]  # strategy -> why it cannot be planned
    current: str
    better: str | None  # a strategy that wins clearly, else None
    plans: dict[str, Plan] = field(default_factory=dict, compare=False)  # strategy -> its plan on the corrected
    #   cluster: what serving.replan: auto brings up

    @property
    def mispredicted(self) -> bool:
        return any(abs(r - 1.0) > MISPREDICTED for r in self.mismatch.values())


def corrected(cluster: ClusterSpec, mismatch: dict[str, float]) -> ClusterSpec:
    """The cluster with each worker slowed (or sped up) by its measured / predicted ratio."""
    workers = tuple(
        replace(w, flops=w.flops / r, bandwidth=w.bandwidth / r, op_s=w.op_s * r, module_s=w.module_s * r,
                call_s=w.call_s * r)
        if (r := mismatch.get(w.name)) else w
        for w in cluster.workers
    )
    return ClusterSpec(workers, cluster.link_bandwidth)


def replan(profile: Profile, cluster: ClusterSpec, current: Plan, measured: dict[str, tuple[int, float]],
           options: PlanOptions) -> Replan:
    """`measured`: fragment_id -> (its most common batch, the mean step seconds at it). Candidates are planned
    pinned, each on the corrected cluster; the current strategy is re-costed the same way, so they compare like
    for like. Pure: the caller logs and applies."""
    from genie.semantic.planner import plan

    pred: dict[str, float] = {}
    got: dict[str, float] = {}
    for f in current.fragments:
        if f.fragment_id in measured:
            batch, seconds = measured[f.fragment_id]
            pred[f.worker] = pred.get(f.worker, 0.0) + step_time(profile, cluster, f, batch)
            got[f.worker] = got.get(f.worker, 0.0) + seconds
    mismatch = {w: got[w] / pred[w] for w in pred if pred[w] > 0}
    fixed = corrected(cluster, mismatch)
    candidates, refused, plans = {}, {}, {}
    for strategy in PINNABLE:
        if strategy == "auto":
            continue
        try:
            plans[strategy] = plan(profile, fixed, replace(options, strategy=strategy))
        except ValueError as exc:
            refused[strategy] = str(exc)
            continue
        candidates[strategy] = plans[strategy].predicted.throughput
    now = candidates.get(current.strategy, 0.0)
    best = max(candidates, key=lambda s: (candidates[s], s == current.strategy), default=current.strategy)
    better = best if best != current.strategy and candidates[best] > (1 + CLEAR_WIN) * now else None
    return Replan(mismatch, candidates, refused, current.strategy, better, plans)
