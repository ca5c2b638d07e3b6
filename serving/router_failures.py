"""What the router does when a replica fails: a step that fails is retried sequence by sequence, a lost
replica's requests move to another replica (or wait for its restart when none is left), and a restarted replica
rejoins. A mixin of Router (serving/router.py), which owns the state these methods use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from genie.errors import GenieError, NotFound, Unavailable
from genie.workers.contract import SeqResult

from .replica import Replica
from .request import FinishReason
from .step_plan import StepPlan

if TYPE_CHECKING:
    from .metrics import Metrics
    from .scheduler import Scheduler
    from .submission import Tracked

log = logging.getLogger("genie.serve")


class ReplicaFailures:
    scheduler: Scheduler
    replicas: dict[str, Replica]
    metrics: Metrics
    step_timeout: float
    restart_wait_s: float | None
    _tracked: dict[str, Tracked]
    _releases: dict[str, list[str]]
    _inbox: asyncio.Queue
    _on_replica_down: Callable[[str, str], None] | None

    if TYPE_CHECKING:  # Router's own
        def _close(self, tracked: Tracked, reason: FinishReason, failure: GenieError | None) -> None: ...

        def _queue_release(self, replica: str, ids: list[str]) -> None: ...

    async def _isolate(self, name: str, plan: StepPlan, exc: GenieError) -> dict[str, SeqResult]:
        log.warning("step on replica %s failed (%s); retrying its %d sequences one by one", name, exc,
                    len(plan.batches[name]))
        results: dict[str, SeqResult] = {}
        replica = self.replicas[name]
        for seq in plan.batches[name]:
            try:
                (result,) = await replica.step([seq.to_seq_step()], timeout=self.step_timeout)
            except (Unavailable, NotFound) as lost:
                self._fail_replica(name, str(lost))
                return results
            except GenieError as own:
                self._fail_request(seq.request_id, type(own)(f"the worker refused this request's step: {own}"))
                continue
            results[result.seq_id] = result
        return results

    def _fail_request(self, request_id: str, failure: GenieError) -> None:
        release_from = self.scheduler.finish(request_id, FinishReason.ERROR, str(failure))
        tracked = self._tracked.pop(request_id, None)
        if tracked is not None:
            self._close(tracked, FinishReason.ERROR, failure)
        if release_from is not None:
            self._queue_release(release_from, [request_id])

    def _fail_replica(self, name: str, reason: str) -> None:
        replica = self.replicas[name]
        if not replica.alive:
            return
        replica.mark_failed(reason)
        self._releases.pop(name, None)  # its KV is gone with it
        log.error("replica %s (%s) is down: %s", name, ", ".join(replica.workers), reason)
        for worker in replica.workers:
            self.metrics.worker_up.labels(worker).set(0)
        self.metrics.kv_used.labels(name).set(0)
        self.metrics.kv_free.labels(name).set(0)
        outcome = self.scheduler.fail_replica(name, reason)
        if outcome.migrated:
            self.metrics.migrations.inc(len(outcome.migrated))
            if any(r.alive for r in self.replicas.values()):
                log.warning("moved %d requests of replica %s to the other replicas", len(outcome.migrated), name)
            else:
                wait = self.restart_wait_s or 0.0
                log.warning("%d requests of replica %s wait up to %g s for it to restart (no other replica is "
                            "alive)", len(outcome.migrated), name, wait)
                asyncio.get_running_loop().call_later(
                    wait, self._inbox.put_nowait, ("restart_overdue", name, reason))
        for request in outcome.failed:
            tracked = self._tracked.pop(request.request_id, None)
            if tracked is not None:
                self.metrics.migration_failures.inc()
                self._close(tracked, FinishReason.ERROR, Unavailable(request.detail or reason))
        if self._on_replica_down is not None:
            self._on_replica_down(name, reason)

    def _restart_overdue(self, name: str, reason: str) -> None:
        """The wait for a restart is over: with still no replica alive, every request waiting ends."""
        if any(r.alive for r in self.replicas.values()):
            return
        failure = Unavailable(f"worker replica {name!r} failed ({reason}) and no replica came back within "
                              f"{self.restart_wait_s:g} s (workers.start_timeout_s)")
        for rid in list(self._tracked):
            self.metrics.migration_failures.inc()
            self._fail_request(rid, failure)

    def _rejoin(self, replica: Replica) -> None:
        self.replicas[replica.name] = replica
        self.scheduler.add_replica(replica.name, replica.num_blocks, replica.prefix_seed)
        for worker in replica.workers:
            self.metrics.worker_up.labels(worker).set(1)
        self.metrics.restarts.labels(replica.name).inc()
        log.info("replica %s (%s) is back and takes requests", replica.name, ", ".join(replica.workers))

    def _fail_batch(self, name: str, plan: StepPlan, exc: BaseException) -> None:
        """A worker answered the step with an error: end that batch's requests, keep the replica."""
        log.error("step on replica %s failed: %s", name, exc)
        for seq in plan.batches[name]:
            self._fail_request(seq.request_id, Unavailable(f"the worker failed this step: {exc}"))
