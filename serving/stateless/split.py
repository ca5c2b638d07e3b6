"""Running a batch on a replica: the whole model on one worker, or a recsys split over two.

The recsys split's replica has two stages, the tables (plan role "sparse") and the dense part. One batch goes
to the tables worker with the inputs it reads (the sparse ids) and comes back as {"pooled": [batch, width]}, the
pooled embeddings only; those and the dense inputs go to the dense worker, whose outputs are the model's. The
workers cut the model themselves (workers/stateless/split.py); here only tensors are routed and measured.

The tables may lie on several tables fragments (a table bigger than one worker sharded by rows): they run at
once, each returns the whole "pooled" layout with zeros where it holds nothing, and their sum goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import torch

from genie.errors import InvalidRequest
from genie.semantic import Plan
from genie.workers.contract import FragmentInfo, FragmentSpec

from ..replica import Replica, Stage
from .meters import Meters

Tensors = dict[str, torch.Tensor]
POOLED = "pooled"  # what the tables part returns and the dense part takes (workers/stateless/split.py)


class WholeModel:
    """One Infer on the replica's only stage."""

    def __init__(self) -> None:
        self.meters = Meters()

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        stage = replica.stages[0]
        started = time.perf_counter()
        outputs = await stage.client.infer(stage.fragment_id, inputs, timeout=timeout)
        self.meters.of(stage.fragment_id, stage.worker).record(_rows(inputs), _compute_s(stage.client), inputs,
                                                               outputs, time.perf_counter() - started)
        return outputs


class RecsysSplit:
    """Tables stage(s), then dense stage; `tables_inputs` / `dense_inputs`: what each fragment reads of a request
    (`tables_inputs` by fragment id when the tables fragments read different inputs)."""

    def __init__(self, tables_inputs: tuple[str, ...] | dict[str, tuple[str, ...]],
                 dense_inputs: tuple[str, ...]) -> None:
        self.tables_inputs = tables_inputs
        self.dense_inputs = tuple(n for n in dense_inputs if n != POOLED)
        self.meters = Meters()

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        *tables, dense = replica.stages
        rows = _rows(inputs)
        parts = await asyncio.gather(*(self._lookup(stage, inputs, rows, timeout) for stage in tables))
        onward = {POOLED: sum(parts[1:], parts[0]), **{name: inputs[name] for name in self.dense_inputs}}
        started = time.perf_counter()
        outputs = await dense.client.infer(dense.fragment_id, onward, timeout=timeout)
        self.meters.of(dense.fragment_id, dense.worker).record(rows, _compute_s(dense.client), onward, outputs,
                                                               time.perf_counter() - started)
        return outputs

    async def _lookup(self, tables: Stage, inputs: Tensors, rows: int, timeout: float) -> torch.Tensor:
        reads = self.tables_inputs
        reads = reads[tables.fragment_id] if isinstance(reads, dict) else reads
        sent = {name: inputs[name] for name in reads}
        started = time.perf_counter()
        pooled = await tables.client.infer(tables.fragment_id, sent, timeout=timeout)
        self.meters.of(tables.fragment_id, tables.worker).record(rows, _compute_s(tables.client), sent, pooled,
                                                                 time.perf_counter() - started)
        if set(pooled) != {POOLED}:
            raise RuntimeError(f"fragment {tables.fragment_id!r} returned {sorted(pooled)}, not {POOLED!r}")
        return pooled[POOLED]


def recsys_executor(infos: list[FragmentInfo]) -> tuple[RecsysSplit, FragmentInfo]:
    """The executor and the model as a client sees it (`infos`: the tables fragments', then the dense one's)."""
    reads = {i.fragment_id: tuple(s.name for s in i.inputs) for i in infos[:-1]}
    return RecsysSplit(reads, tuple(s.name for s in infos[-1].inputs)), split_info(infos)


def _compute_s(client) -> float:
    """The worker's forward seconds of the Infer that just returned (WorkerClient sets it before returning, and
    nothing runs in between); 0.0 for a client that does not time its calls."""
    return getattr(client, "last_infer_compute_s", 0.0)


def _rows(inputs: Tensors) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def split_specs(plan: Plan, base: FragmentSpec) -> dict[str, FragmentSpec]:
    """What each worker of a recsys split loads: the tables part or the dense part, cut at the plan's tables.
    A tables fragment's cut names what it holds ("tables.2", or rows "tables.2[0:120]") and, as "~tables.1",
    the tables it does not (workers/stateless/split.py). Several replicas of a split are refused."""
    sparse = [f for f in plan.fragments if f.role == "sparse"]
    if not sparse or len(plan.replicas()) != 1:
        raise InvalidRequest(f"model {plan.model!r}: the recsys split has {len(sparse)} tables fragment(s) and "
                             f"{len(plan.replicas())} replicas; genie-serve runs one replica with its tables on one "
                             "or more workers")
    tables = sorted({n.partition("[")[0] for f in sparse for n in f.nodes})  # a set: workers take graph order
    specs = {}
    for f in plan.fragments:
        cut = tuple(tables)
        if f.role == "sparse":
            mine = {n.partition("[")[0] for n in f.nodes}
            cut = tuple(sorted(f.nodes)) + tuple(f"~{t}" for t in tables if t not in mine)
        specs[f.fragment_id] = dataclasses.replace(base, fragment_id=f.fragment_id, cut=cut,
                                                   part="tables" if f.role == "sparse" else "dense")
    return specs


def split_info(infos: list[FragmentInfo]) -> FragmentInfo:
    """The split model as a client sees it: the tables' and the dense part's inputs (not "pooled"), the dense
    part's outputs. `infos` in stage order: the tables fragments', then the dense one's."""
    *tables, dense = infos
    inputs: dict[str, object] = {}
    for spec in [s for t in tables for s in t.inputs] + [s for s in dense.inputs if s.name != POOLED]:
        inputs.setdefault(spec.name, spec)
    return dataclasses.replace(dense, inputs=tuple(inputs.values()),
                               weight_bytes=sum(i.weight_bytes for i in infos))
