"""Worker supervision: notice a replica that died, hung or lost its state, and bring it back.

One task checks every worker each `interval` s: a launched process by its exit status, every worker by an
Info call (which also lists its fragments, so a fragment unloaded behind the router's back is noticed), and,
while the router holds no request on a replica, by its sequence count (a worker holding sequences the router
never created is reset). A lost replica is reported to the router, which migrates its requests; then the
supervisor restarts the replica's dead or hung workers (launched ones), asks a Ray actor where its restarted
worker listens now (launcher ray), or probes them until they answer (attached ones), reloads and warms its
fragments, and hands the fresh replica back to the router.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from genie.config import GenieConfig
from genie.errors import GenieError, NotFound
from genie.semantic import Plan, PlanFragment
from genie.workers.contract import FragmentSpec

from .launcher import WorkerPool, load_replica, replica_name, spawn_one, warm_one
from .replica import Replica
from .router import Router

log = logging.getLogger("genie.serve")

HEALTH_TIMEOUT_S = 2.0
MISSES_BEFORE_LOST = 2  # consecutive failed checks before a live process counts as hung
STRAY_CHECKS = 2  # consecutive idle checks with stray sequences before a reset


@dataclass(slots=True)
class Supervisor:
    cfg: GenieConfig
    plan: Plan
    pool: WorkerPool
    specs: dict[str, FragmentSpec]
    probe_ids: list[int]
    artifact_root: str
    # Set once the router exists (it reports failures back through replica_down); a StatelessService speaks the
    # same protocol (replicas, replica_lost, replica_back, holds_nothing_on).
    router: Router | None = None
    # One real call that proves a reloaded replica serves; None: a generation step of probe_ids (LLMs).
    warm: Callable[[Replica], Awaitable[None]] | None = None
    check_strays: bool = True  # LLM workers may hold sequences nobody created; stateless ones hold nothing
    interval: float = 1.0
    restarting: set[str] = field(default_factory=set)
    _misses: dict[str, int] = field(default_factory=dict)
    _strays: dict[str, int] = field(default_factory=dict)
    _tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def groups(self) -> dict[str, list[PlanFragment]]:
        return {replica_name(group[0]): group for group in self.plan.replicas()}

    def replica_down(self, name: str, reason: str) -> None:
        """The router marked a replica failed (its own step failed, or we reported it): bring it back."""
        if not self.cfg.workers.restart or name in self._tasks:
            return
        self.restarting.add(name)
        self._tasks[name] = asyncio.create_task(self._bring_back(name), name=f"genie-restart-{name}")

    async def run(self) -> None:
        assert self.router is not None
        try:
            while True:
                for name, replica in list(self.router.replicas.items()):
                    if replica.alive and replica.warm:
                        reason = await self._check(replica)
                        if reason is not None:
                            self.router.replica_lost(name, reason)
                await asyncio.sleep(self.interval)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _check(self, replica: Replica) -> str | None:
        for stage in replica.stages:
            reason = await self._check_worker(stage.worker, stage.fragment_id)
            if reason is not None:
                return reason
        return await self._check_strays(replica)

    async def _check_worker(self, worker: str, fragment_id: str) -> str | None:
        proc = self.pool.processes.get(worker)
        if proc is not None and not proc.alive():
            return f"worker {worker} (pid {proc.pid}) exited with code {proc.returncode}"
        try:
            info = await self.pool.clients[worker].info(timeout=HEALTH_TIMEOUT_S)
        except GenieError as exc:
            self._misses[worker] = self._misses.get(worker, 0) + 1
            if self._misses[worker] >= MISSES_BEFORE_LOST:
                return f"worker {worker} stopped answering: {exc}"
            return None
        self._misses[worker] = 0
        if fragment_id not in info.fragments:
            return f"worker {worker} no longer holds fragment {fragment_id} (it was unloaded or the worker restarted)"
        return None

    async def _check_strays(self, replica: Replica) -> str | None:
        """Sequences on a worker while the router has none there: someone else's, or a leak; reset it."""
        assert self.router is not None
        if not self.router.holds_nothing_on(replica.name):
            self._strays[replica.name] = 0
            return None
        stage = replica.stages[0]
        try:
            stats = await stage.client.stats(timeout=HEALTH_TIMEOUT_S)
        except GenieError:
            return None  # the next Info check decides whether the worker is gone
        held = sum(f.sequences for f in stats.fragments if f.fragment_id == stage.fragment_id)
        if held == 0 or not self.router.holds_nothing_on(replica.name):
            self._strays[replica.name] = 0
            return None
        self._strays[replica.name] = self._strays.get(replica.name, 0) + 1
        if self._strays[replica.name] < STRAY_CHECKS:
            return None
        self._strays[replica.name] = 0
        return f"worker {stage.worker} holds {held} sequences that genie-serve never created; resetting it"

    async def _bring_back(self, name: str) -> None:
        delay = self.cfg.workers.restart_backoff_s
        attempt = 1
        try:
            while True:
                try:
                    replica = await self._rebuild(name)
                    break
                except (GenieError, OSError) as exc:
                    log.warning("bringing replica %s back failed (attempt %d): %s; next try in %.1f s",
                                name, attempt, exc, delay)
                await asyncio.sleep(delay)  # back-off between restarts of a worker that keeps failing
                delay = min(2 * delay, self.cfg.workers.restart_backoff_max_s)
                attempt += 1
            assert self.router is not None
            self.router.replica_back(replica)
        finally:
            self.restarting.discard(name)
            self._tasks.pop(name, None)

    async def _rebuild(self, name: str) -> Replica:
        fragments = self.groups()[name]
        timeout = self.cfg.workers.start_timeout_s
        for worker in sorted({f.worker for f in fragments}):
            await self._revive(worker, [f.fragment_id for f in fragments if f.worker == worker])
        replica, _ = await load_replica(fragments, self.pool, self.specs, timeout)
        if self.warm is not None:
            await self.warm(replica)
        else:
            await warm_one(replica, self.probe_ids, self.cfg.serving.worker_timeout_s)
        log.info("replica %s restarted: fragments reloaded and a generation step succeeded", name)
        return replica

    async def _revive(self, worker: str, fragment_ids: list[str]) -> None:
        """A launched worker that is dead or does not answer is replaced by a new process; a worker that
        answers (attached, or launched and healthy) gets the replica's fragments unloaded for a clean reload.
        Under the worker's lock: another model's supervisor may be reviving the same worker."""
        async with self.pool.revive_lock(worker):
            await self._revive_locked(worker, fragment_ids)

    async def _revive_locked(self, worker: str, fragment_ids: list[str]) -> None:
        proc = self.pool.processes.get(worker)
        client = self.pool.clients[worker]
        placed = self.pool.placed.get(worker)
        if placed is not None and not await _answers(client):
            await self._relocate(worker, placed)
            return
        if proc is not None and not (proc.alive() and await _answers(client)):
            await asyncio.to_thread(proc.stop, 0.5)  # SIGKILL after 0.5 s: a stopped (SIGSTOP) process too
            await client.close()
            log.info("starting a new worker process for %s (the old one, pid %d, %s)", worker, proc.pid,
                     f"exited with {proc.returncode}")
            new = await asyncio.to_thread(spawn_one, self.cfg, self.pool.token, self.artifact_root)
            self.pool.adopt(worker, new, self.cfg.serving.worker_timeout_s)
            self._misses[worker] = 0
            return
        if proc is None and not await _answers(client):
            raise GenieError(f"the attached worker {worker} does not answer yet")
        for fragment_id in fragment_ids:
            try:
                await client.unload_fragment(fragment_id, timeout=self.cfg.workers.start_timeout_s)
            except NotFound:
                pass  # already gone: that may be why the replica failed
        self._misses[worker] = 0

    async def _relocate(self, worker: str, placed) -> None:
        """A Ray actor's worker that does not answer: Ray restarts a dead actor, the actor restarts a dead
        genie-worker; either way it comes back at a new address, with no fragment loaded."""
        address = await placed.address(self.cfg.workers.start_timeout_s)
        await self.pool.clients[worker].close()
        client = self.pool.connect(worker, address, self.cfg.serving.worker_timeout_s)
        if not await _answers(client):
            raise GenieError(f"the Ray actor of {worker} reports {address}, which does not answer yet")
        log.info("worker %s is back at %s (its Ray actor restarted it)", worker, address)
        self._misses[worker] = 0


async def _answers(client) -> bool:
    try:
        health = await client.health(timeout=HEALTH_TIMEOUT_S)
    except GenieError:
        return False
    return health.serving
