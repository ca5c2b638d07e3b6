"""Running a batch on a pipelined replica: stages of contiguous blocks on their own workers, micro-batches
streamed through them so that every stage works at once.

The batch is cut into `micro_batches` micro-batches. Micro-batch k enters stage s once micro-batch k-1 has left
it, so stage 1 runs micro-batch k+1 while stage 2 runs micro-batch k. The service may run `depth` batches on the
replica at once (one per stage): each stage's gate lives as long as the replica, first come first served, so
the next batch enters stage 1 while the last micro-batches of this one are still in stage 2. Each stage returns its boundary
activations ({"act_0": ...}, workers/stateless/stages.py), which go to the next stage as they are; the last stage
returns the model's outputs, and the micro-batches' outputs are joined back in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import torch

from genie.errors import InvalidRequest
from genie.semantic import Plan
from genie.workers.contract import FragmentInfo, FragmentSpec

from ..replica import Replica, Stage
from .meters import Meters

Tensors = dict[str, torch.Tensor]
STAGE = "stage"  # the worker part of a pipeline stage (workers/stateless/stages.py)
MICRO_BATCHES = 2  # micro-batches per stacked batch: more keep the stages fuller, each costs one more round trip
MICRO_ROWS = 4  # the fewest rows of a micro-batch: smaller ones cost more in round trips than they win


class Pipelined:
    """`micro_batches`: how many pieces a batch is cut into, each of at least `micro_rows` rows."""

    def __init__(self, micro_batches: int = MICRO_BATCHES, micro_rows: int = MICRO_ROWS) -> None:
        if micro_batches < 1 or micro_rows < 1:
            raise ValueError(f"micro_batches and micro_rows must be at least 1, got {micro_batches}, {micro_rows}")
        self.micro_batches, self.micro_rows = micro_batches, micro_rows
        self.depth = 2  # StatelessService: batches one replica may run at once
        self._gates: dict[tuple[str, int], list[asyncio.Lock]] = {}  # by (replica name, id of its stages)
        self.meters = Meters()
        self.calls = 0
        self.overlapped = 0  # batches in which two stages had calls in flight at one moment (seen from the router)

    async def __call__(self, replica: Replica, inputs: Tensors, timeout: float) -> Tensors:
        rows = int(next(iter(inputs.values())).shape[0])
        size = max(math.ceil(rows / self.micro_batches), self.micro_rows)
        pieces = [{n: t[i:i + size] for n, t in inputs.items()} for i in range(0, rows, size)]
        # One micro-batch in a stage at a time, first come first served, across the batches in flight. A replica
        # brought back has new stages, so new gates.
        gates = self._gates.setdefault((replica.name, id(replica.stages)), [asyncio.Lock() for _ in replica.stages])
        spans: list[tuple[str, float, float]] = []  # (fragment_id, start, end) of each call
        tasks = [asyncio.ensure_future(self._through(replica.stages, gates, p, timeout, spans)) for p in pieces]
        try:
            outs = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one stage failed or the batch was cancelled: the others stop too
                task.cancel()
        self.calls += 1
        self.overlapped += _overlap(spans)
        return {name: torch.cat([o[name] for o in outs]) for name in outs[0]}

    async def _through(self, stages: list[Stage], gates: list[asyncio.Lock], sent: Tensors, timeout: float,
                       spans: list[tuple[str, float, float]]) -> Tensors:
        rows = int(next(iter(sent.values())).shape[0])
        for stage, gate in zip(stages, gates, strict=True):
            async with gate:
                started = time.monotonic()
                out = await stage.client.infer(stage.fragment_id, sent, timeout=timeout)
                ended = time.monotonic()
                spans.append((stage.fragment_id, started, ended))
                seconds = getattr(stage.client, "last_infer_compute_s", 0.0)  # WorkerClient's, of this very call
                self.meters.of(stage.fragment_id, stage.worker).record(rows, seconds, sent, out, ended - started)
            sent = out
        return sent


def _overlap(spans: list[tuple[str, float, float]]) -> bool:
    """Whether calls of two different stages were in flight at one moment."""
    return any(a != b and s < f and t < e for a, t, e in spans for b, s, f in spans)


def pipeline_specs(plan: Plan, base: FragmentSpec) -> dict[str, FragmentSpec]:
    """Each stage's worker part: blocks [layer_start, layer_end) of the replica's whole chain of blocks (cut)."""
    specs = {}
    for group in plan.replicas():
        chain = tuple(name for f in group for name in f.nodes)
        start = 0
        for f in group:
            if not f.nodes:
                raise InvalidRequest(f"model {plan.model!r}: pipeline stage {f.fragment_id!r} has no blocks; "
                                     "re-plan the model")
            specs[f.fragment_id] = dataclasses.replace(base, fragment_id=f.fragment_id, part=STAGE, cut=chain,
                                                       layer_start=start, layer_end=start + len(f.nodes))
            start += len(f.nodes)
    return specs


def pipeline_info(infos: list[FragmentInfo]) -> FragmentInfo:
    """The pipelined model as a client sees it: the first stage's inputs, the last stage's outputs (`infos` of
    one replica, in stage order)."""
    first, last = infos[0], infos[-1]
    return dataclasses.replace(last, inputs=first.inputs, weight_bytes=sum(i.weight_bytes for i in infos))
