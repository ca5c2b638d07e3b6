"""A stateless model served: requests wait in a dynamic batcher, and each batch runs on a free replica.

One task owns the dispatch: it takes a due batch (`batcher.py` decides when one is due) for every replica that
is free, pads and stacks it, and runs it on the replica: one Infer call, or the stages of a split
(`split.py`). Replicas are interchangeable, so a replica lost
mid-batch costs nothing but time: its jobs go back to the queue, at most `migration_limit` times each, and the
supervisor brings the replica back. A batch the worker refuses as invalid is run again job by job, so one bad
input fails its own request only.

The service speaks the router's supervision protocol (`replicas`, `replica_lost`, `replica_back`,
`holds_nothing_on`), so the same Supervisor restarts both kinds of replica.

A model whose outputs depend on the whole batch (CLIP's logits_per_image: [images, texts]) is served with
`whole_requests`: each request is one job of all its rows and runs as a forward of its own, never mixed with another.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from genie.errors import GenieError, InvalidRequest, Unavailable

from ..metrics import Metrics
from ..replica import Replica, not_ready_reasons, replicas_ready
from .batcher import BatchPolicy, DynamicBatcher
from .padding import pad_batch
from .split import WholeModel

log = logging.getLogger("genie.serve")

Tensors = dict[str, torch.Tensor]


@dataclass(slots=True)
class Job:
    """One example: token ids (text models, padded at dispatch) or tensors with a leading batch of 1."""

    ids: list[int] | None
    tensors: Tensors | None
    arrived: float
    future: asyncio.Future = field(repr=False)
    moves: int = 0

    @property
    def length(self) -> int:
        return len(self.ids) if self.ids is not None else 0

    def shape_key(self) -> tuple:
        if self.tensors is None:
            return ()
        return tuple(sorted((name, tuple(t.shape[1:]), t.dtype) for name, t in self.tensors.items()))


@dataclass(frozen=True, slots=True)
class TextInputs:
    """How token ids become a fragment's inputs: the pad id and which optional inputs the fragment takes."""

    pad_id: int
    max_length: int
    token_type_ids: bool  # the fragment takes token_type_ids (BERT-style): all zeros, one segment


class StatelessService:
    """Batches and runs the requests of one stateless model over its replicas."""

    def __init__(self, model: str, replicas: dict[str, Replica], policy: BatchPolicy, metrics: Metrics,
                 timeout: float, migration_limit: int, text: TextInputs | None = None,
                 on_replica_down=None, whole_requests: bool = False, execute=None) -> None:
        self.model = model
        self.execute = execute or WholeModel()  # runs one stacked batch on a replica (split.py)
        self.plan_report = None  # serving/plans.PlanReport: the plan, predicted beside measured
        self.replanner = None  # stateless/replan.Replanner with serving.replan: auto; run() runs its checks
        self.replicas = replicas
        self.policy = policy  # max_batch_size still bounds the rows of one request
        self.whole_requests = whole_requests
        self.batcher: DynamicBatcher[Job] = DynamicBatcher(dataclasses.replace(policy, max_batch_size=1)
                                                           if whole_requests else policy)
        self.metrics = metrics
        self.timeout = timeout
        self.migration_limit = migration_limit
        self.text = text
        self.on_replica_down = on_replica_down
        self.accepting = True
        self.restarting: set[str] = set()  # the supervisor's set, shared: replicas it is bringing back
        self._busy: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.largest_batch = 0

    # -- what front doors call --------------------------------------------------------------------------

    async def run_ids(self, rows: list[list[int]]) -> list[Tensors]:
        """Runs token-id inputs (one job each, batched with everyone else's); outputs per row, no batch dim."""
        if self.text is None:
            raise InvalidRequest(f"model '{self.model}' takes tensors, not text")
        return await self._run([Job(ids=list(r), tensors=None, arrived=0.0, future=None) for r in rows])

    async def run_tensors(self, rows: list[Tensors]) -> list[Tensors]:
        """Runs tensor inputs, each dict one example with a leading batch dimension of 1."""
        for i, row in enumerate(rows):
            bad = next((name for name, t in row.items() if t.dim() == 0 or t.shape[0] != 1), None)
            if bad is not None:  # a batch of 2 would shift every later row of the stacked batch onto a neighbour
                raise InvalidRequest(f"rows[{i}]['{bad}'] has shape {list(row[bad].shape)}; each input needs a "
                                     "leading batch dimension of 1 (send one row per example)")
        if self.whole_requests and rows:
            return await self._run_whole(rows)
        return await self._run([Job(ids=None, tensors=r, arrived=0.0, future=None) for r in rows])

    async def _run_whole(self, rows: list[Tensors]) -> list[Tensors]:
        """All rows as one job, so one forward; its outputs split back into rows."""
        try:
            tensors = {name: torch.cat([r[name] for r in rows]) for name in rows[0]}
        except (KeyError, RuntimeError):
            raise InvalidRequest(f"model '{self.model}' runs a request as one batch: its rows need the same "
                                 "inputs, of one shape") from None
        (outputs,) = await self._run([Job(ids=None, tensors=tensors, arrived=0.0, future=None)])
        return [{name: t[i] for name, t in outputs.items()} for i in range(len(rows))]

    @property
    def ready(self) -> bool:
        return replicas_ready(self.accepting, self.replicas)

    def not_ready_reasons(self) -> list[str]:
        return not_ready_reasons(self.accepting, self.replicas, f"'{self.model}'")

    # -- the supervisor's protocol ---------------------------------------------------------------------

    def replica_lost(self, name: str, reason: str) -> None:
        replica = self.replicas.get(name)
        if replica is None or not replica.alive:
            return
        log.warning("model %s: replica %s lost: %s", self.model, name, reason)
        replica.mark_failed(reason)
        for key, task in list(self._busy.items()):
            if key.split("#")[0] == name and not task.done():
                task.cancel(f"replica {name} was lost: {reason}")
        if self.on_replica_down is not None:
            self.on_replica_down(name, reason)
        if not any(r.alive for r in self.replicas.values()) and not self.restarting:
            self._fail_waiting(Unavailable(f"no replica of model '{self.model}' is alive; see /health"))
        self._wake.set()

    def replica_back(self, replica: Replica) -> None:
        self.replicas[replica.name] = replica
        self.metrics.restarts.labels(replica.name).inc()
        log.info("model %s: replica %s serves again", self.model, replica.name)
        self._wake.set()

    def holds_nothing_on(self, name: str) -> bool:
        return True  # stateless: a worker never holds anything of ours between calls

    def stop_accepting(self) -> None:
        self.accepting = False

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def abort_all(self, reason: str) -> None:
        """Ends every waiting and running request with Unavailable (the drain's grace period is over)."""
        self._fail_waiting(Unavailable(reason))
        for task in list(self._busy.values()):
            task.cancel(reason)

    def _update_idle(self) -> None:
        if self._busy or len(self.batcher):
            self._idle.clear()
        else:
            self._idle.set()

    def switch(self, replicas: dict[str, Replica], execute) -> list[asyncio.Task]:
        """From now on batches go to `replicas`, run by `execute` (a re-plan's drain point); the batches already
        running keep the executor and replica they started on. Returns those, for the caller to await before it
        frees the old replicas. The new replicas' names must differ from the old ones'."""
        clash = sorted(set(replicas) & set(self.replicas))
        if clash:
            raise ValueError(f"the new replicas reuse the names {clash}; give each generation its own")
        running = [task for task in self._busy.values() if not task.done()]
        self.replicas, self.execute = replicas, execute
        self._wake.set()
        return running

    # -- the dispatch task -----------------------------------------------------------------------------

    async def run(self) -> None:
        checks = asyncio.create_task(self.replanner.run(), name=f"genie-replan-{self.model}") if self.replanner \
            else None
        try:
            while True:
                self._dispatch(time.monotonic())
                due = self.batcher.next_due()
                timeout = None if due is None or not self._free() else max(0.0, due - time.monotonic())
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            for task in [*self._busy.values(), *([checks] if checks else [])]:
                task.cancel()
            await asyncio.gather(*self._busy.values(), *([checks] if checks else []), return_exceptions=True)
            self._fail_waiting(Unavailable("genie-serve is shutting down"))

    def _free(self) -> list[Replica]:
        depth = getattr(self.execute, "depth", 1)  # batches one replica runs at once (a pipeline: one per stage)
        return [r for r in self.replicas.values() if r.alive and r.warm and self._slot(r.name, depth) is not None]

    def _slot(self, name: str, depth: int) -> str | None:
        """A free key of `_busy` for the replica: its name, then name#1, name#2 ... up to `depth` batches."""
        return next((key for key in [name] + [f"{name}#{i}" for i in range(1, depth)] if key not in self._busy), None)

    def _dispatch(self, now: float) -> None:
        for replica in self._free():
            jobs = self.batcher.take(now)
            if not jobs:
                return
            # The executor is bound now: a switch() before the task starts must not hand it the new one.
            task = asyncio.create_task(self._run_batch(replica, jobs, self.execute),
                                       name=f"genie-batch-{replica.name}")
            key = self._slot(replica.name, getattr(self.execute, "depth", 1))
            self._busy[key] = task
            task.add_done_callback(lambda _t, key=key: self._done(key))

    def _done(self, name: str) -> None:
        self._busy.pop(name, None)
        self._update_idle()
        self._wake.set()

    async def _run(self, jobs: list[Job]) -> list[Tensors]:
        if not self.accepting:
            raise Unavailable("the server is shutting down and takes no new requests")
        if not any(r.alive for r in self.replicas.values()) and not self.restarting:
            raise Unavailable(f"no replica of model '{self.model}' is alive; see /health")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        added: list[Job] = []
        try:
            for job in jobs:
                job.arrived, job.future = now, loop.create_future()
                self.batcher.add(job, job.length, now)
                added.append(job)
            self._update_idle()
            self._wake.set()
            return list(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            for job in added:  # the client went away, or a sibling failed: nobody waits for these any more
                self.batcher.remove(job)
                if not job.future.done():
                    job.future.cancel()
            self._update_idle()

    async def _run_batch(self, replica: Replica, jobs: list[Job], execute) -> None:
        jobs = [j for j in jobs if not j.future.done()]
        if not jobs:
            return
        # The isolation reruns sit inside the outer try: a replica lost (or cancelled) while it runs the jobs one
        # by one must still send them elsewhere, not leave them waiting forever.
        try:
            try:
                await self._infer_into(replica, jobs, execute)
            except InvalidRequest as exc:
                if len(jobs) == 1:
                    _fail(jobs, exc)
                    return
                await self._infer_each(replica, jobs, execute)
        except asyncio.CancelledError:  # the replica was lost (replica_lost cancels its batch), or shutdown
            self._retry(jobs, replica.failure or "its replica stopped")
            raise
        except GenieError as exc:
            self.replica_lost(replica.name, str(exc))
            self._retry(jobs, str(exc))
        except Exception as exc:  # a bug (ours or the model's outputs): fail the batch rather than hang it
            log.exception("model %s: a batch on replica %s failed", self.model, replica.name)
            _fail(jobs, exc)

    async def _infer_each(self, replica: Replica, jobs: list[Job], execute) -> None:
        """Runs each job alone, so one bad input fails its own request only."""
        for job in jobs:
            if job.future.done():  # its client went away meanwhile
                continue
            try:
                await self._infer_into(replica, [job], execute)
            except InvalidRequest as alone:
                _fail([job], alone)

    async def _infer_into(self, replica: Replica, jobs: list[Job], execute) -> None:
        outputs = await execute(replica, self._stack(jobs), self.timeout)
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        self.metrics.batch_size.labels(self.model).observe(len(jobs))
        for i, job in enumerate(jobs):
            if not job.future.done():  # a whole request is the only job of its forward: all of it is its own
                job.future.set_result(outputs if self.whole_requests else {name: t[i] for name, t in outputs.items()})

    def _stack(self, jobs: list[Job]) -> Tensors:
        if jobs[0].ids is not None:
            assert self.text is not None
            ids, mask = pad_batch([j.ids for j in jobs], self.text.pad_id, max_length=self.text.max_length)
            inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if self.text.token_type_ids:
                inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            return inputs
        if len({j.shape_key() for j in jobs}) > 1:
            raise InvalidRequest("inputs of different shapes cannot share a batch")  # isolated: each runs alone
        names = jobs[0].tensors.keys()
        return {name: torch.cat([j.tensors[name] for j in jobs]) for name in names}

    def _retry(self, jobs: Iterable[Job], reason: str) -> None:
        for job in jobs:
            if job.future.done():
                continue
            if job.moves >= self.migration_limit or not self.accepting or not self._can_serve_later():
                self.metrics.migration_failures.inc()
                job.future.set_exception(Unavailable(
                    f"model '{self.model}': the replica running this request failed ({reason}) and it was "
                    f"moved {job.moves} times already; retry the request"
                ))
                continue
            job.moves += 1
            self.metrics.migrations.inc()
            try:
                self.batcher.add(job, job.length, job.arrived)
            except GenieError as exc:  # the queue filled up meanwhile
                _fail([job], exc)
        self._wake.set()

    def _can_serve_later(self) -> bool:
        """A replica is alive, or the supervisor is bringing one back: a job queued now will run."""
        return any(r.alive for r in self.replicas.values()) or bool(self.restarting)

    def _fail_waiting(self, exc: GenieError) -> None:
        while jobs := self.batcher.take(float("inf")):
            _fail(jobs, exc)


def _fail(jobs: Iterable[Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
