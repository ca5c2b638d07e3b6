"""Running a batch on a branch-parallel replica (a CLIP-style model): the vision and text encoders on their
own workers at once, then the fusion where the plan put it. Only the two feature vectors per example cross; the
workers build each part themselves (workers/stateless/branches.py)."""

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
PARTS = {"branch:image": "image", "branch:text": "text", "fusion": "fusion"}  # plan role -> worker part


class BranchParallel:
    """`roles`: fragment_id -> plan role; `reads`: fragment_id -> the request inputs a branch takes."""

    def __init__(self, roles: dict[str, str], reads: dict[str, tuple[str, ...]]) -> None:
        self.roles, self.reads = roles, reads
        self.meters = Meters()
        self.calls = 0
        self.overlapped = 0  # calls whose branch RPCs were all in flight at one moment (seen from the router)

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        branches = [s for s in replica.stages if self.roles[s.fragment_id] != "fusion"]
        (fusion,) = [s for s in replica.stages if self.roles[s.fragment_id] == "fusion"]
        rows = int(next(iter(inputs.values())).shape[0])
        runs = await asyncio.gather(*(self._run(s, {n: inputs[n] for n in self.reads[s.fragment_id]}, rows, timeout)
                                      for s in branches))
        self.calls += 1
        self.overlapped += max(start for start, _, _ in runs) < min(end for _, end, _ in runs)
        features = {name: t for _, _, out in runs for name, t in out.items()}
        return (await self._run(fusion, features, rows, timeout))[2]

    async def _run(self, stage: Stage, sent: Tensors, rows: int, timeout: float) -> tuple[float, float, Tensors]:
        started = time.monotonic()
        out = await stage.client.infer(stage.fragment_id, sent, timeout=timeout)
        ended = time.monotonic()
        seconds = getattr(stage.client, "last_infer_compute_s", 0.0)  # WorkerClient's, set by this very call
        self.meters.of(stage.fragment_id, stage.worker).record(rows, seconds, sent, out, ended - started)
        return started, ended, out


def branch_specs(plan: Plan, base: FragmentSpec) -> dict[str, FragmentSpec]:
    """Each fragment's worker part; a plan with another modality than image and text is refused."""
    unknown = sorted({f.role for f in plan.fragments} - set(PARTS))
    if unknown or len(plan.replicas()) != 1:
        raise InvalidRequest(f"model {plan.model!r}: genie-serve runs branch-parallel plans of CLIP-style models "
                             f"(image and text branches and a fusion), not {', '.join(unknown) or 'several replicas'}")
    return {f.fragment_id: dataclasses.replace(base, fragment_id=f.fragment_id, part=PARTS[f.role])
            for f in plan.fragments}


def branch_executor(plan: Plan, infos: dict[str, FragmentInfo]) -> tuple[BranchParallel, FragmentInfo]:
    """The executor, and the model as a client sees it: every branch's inputs, the fusion's outputs."""
    roles = {f.fragment_id: f.role for f in plan.fragments}
    reads = {fid: tuple(s.name for s in info.inputs) for fid, info in infos.items() if roles[fid] != "fusion"}
    fusion = next(info for fid, info in infos.items() if roles[fid] == "fusion")
    inputs = tuple(s for fid in sorted(reads, key=lambda f: roles[f] != "branch:text") for s in infos[fid].inputs)
    weights = sum(info.weight_bytes for info in infos.values())
    return BranchParallel(roles, reads), dataclasses.replace(fusion, inputs=inputs, weight_bytes=weights)
