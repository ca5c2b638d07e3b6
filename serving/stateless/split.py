"""Running a batch on a replica: the whole model on one worker, or a recsys split over two.

The recsys split's replica has two stages, the tables (plan role "sparse") and the dense part. One batch goes
to the tables worker with the inputs it reads (the sparse ids) and comes back as {"pooled": [batch, width]}, the
pooled embeddings only; those and the dense inputs go to the dense worker, whose outputs are the model's. The
workers cut the model themselves (workers/stateless/split.py); here only tensors are routed and measured.
"""

from __future__ import annotations

import dataclasses

import torch

from genie.errors import InvalidRequest
from genie.semantic import Plan
from genie.workers.contract import FragmentInfo, FragmentSpec

from ..replica import Replica
from .meters import Meters

Tensors = dict[str, torch.Tensor]
POOLED = "pooled"  # what the tables part returns and the dense part takes (workers/stateless/split.py)


class WholeModel:
    """One Infer on the replica's only stage."""

    def __init__(self) -> None:
        self.meters = Meters()

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        stage = replica.stages[0]
        outputs = await stage.client.infer(stage.fragment_id, inputs, timeout=timeout)
        self.meters.of(stage.fragment_id, stage.worker).record(_rows(inputs), _compute_s(stage.client), inputs,
                                                               outputs)
        return outputs


class RecsysSplit:
    """Tables stage, then dense stage; `tables_inputs` / `dense_inputs`: what each fragment reads of a request."""

    def __init__(self, tables_inputs: tuple[str, ...], dense_inputs: tuple[str, ...]) -> None:
        self.tables_inputs = tables_inputs
        self.dense_inputs = tuple(n for n in dense_inputs if n != POOLED)
        self.meters = Meters()

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        tables, dense = replica.stages
        rows = _rows(inputs)
        sent = {name: inputs[name] for name in self.tables_inputs}
        pooled = await tables.client.infer(tables.fragment_id, sent, timeout=timeout)
        self.meters.of(tables.fragment_id, tables.worker).record(rows, _compute_s(tables.client), sent, pooled)
        if set(pooled) != {POOLED}:
            raise RuntimeError(f"fragment {tables.fragment_id!r} returned {sorted(pooled)}, not {POOLED!r}")
        onward = {POOLED: pooled[POOLED], **{name: inputs[name] for name in self.dense_inputs}}
        outputs = await dense.client.infer(dense.fragment_id, onward, timeout=timeout)
        self.meters.of(dense.fragment_id, dense.worker).record(rows, _compute_s(dense.client), onward, outputs)
        return outputs


def _compute_s(client) -> float:
    """The worker's forward seconds of the Infer that just returned (WorkerClient sets it before returning, and
    nothing runs in between); 0.0 for a client that does not time its calls."""
    return getattr(client, "last_infer_compute_s", 0.0)


def _rows(inputs: Tensors) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def split_specs(plan: Plan, base: FragmentSpec) -> dict[str, FragmentSpec]:
    """What each worker of a recsys split loads: the tables part or the dense part, cut at the plan's tables.
    A plan that spreads the tables over several workers is refused: one tables stage is what runs today."""
    sparse = [f for f in plan.fragments if f.role == "sparse"]
    if len(sparse) != 1 or len(plan.replicas()) != 1:
        raise InvalidRequest(f"model {plan.model!r}: the recsys split puts its tables on {len(sparse)} workers; "
                             "genie-serve runs a split with every table on one worker (give that worker more "
                             "memory, workers.memory_mib)")
    cut = tuple(sorted(sparse[0].nodes))  # a set: the workers take the lookups in the graph's order
    return {
        f.fragment_id: dataclasses.replace(base, fragment_id=f.fragment_id, cut=cut,
                                           part="tables" if f.role == "sparse" else "dense")
        for f in plan.fragments
    }


def split_info(infos: list[FragmentInfo]) -> FragmentInfo:
    """The split model as a client sees it: the tables' and the dense part's inputs (not "pooled"), the dense
    part's outputs. `infos` in stage order."""
    tables, dense = infos
    names = {s.name for s in tables.inputs}
    inputs = tables.inputs + tuple(s for s in dense.inputs if s.name != POOLED and s.name not in names)
    return dataclasses.replace(dense, inputs=inputs, weight_bytes=tables.weight_bytes + dense.weight_bytes)
