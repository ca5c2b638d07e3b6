"""serving.replan: auto for a stateless model: when its measured step times miss the plan's predictions and,
re-costed on them, another strategy wins clearly (semantic/planner/recost.py's thresholds), that strategy's
plan is brought up and switched to at the next drain point, with no request dropped.

The switch, in order: the new fragments load beside the old ones (new ids, new replica names) and each new
replica runs one warm-up call; the plan report starts measuring the new plan; the service sends every batch
from then on to the new replicas, while the batches already running finish on the old ones (a batch that fails
there goes back to the queue and runs on the new ones); once they are done, the old fragments are unloaded.
A switch that cannot be made (no executor for the strategy, a worker not running, a load that fails) leaves
the running plan serving and is not tried again. A model never switches back to a strategy it left, so two
plans whose measurements each favour the other cannot flap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from genie.errors import GenieError, NotFound
from genie.semantic import Plan
from genie.semantic.planner.recost import Replan
from genie.workers.contract import FragmentInfo, FragmentSpec

from ..launcher import WorkerPool, load_replicas
from ..plans import PlanReport
from ..replica import Replica
from .executors import executor_for, not_runnable, specs_for

log = logging.getLogger("genie.serve")

MIN_CALLS = 8  # calls of each fragment at its most common batch before its measured step time counts


@dataclass(slots=True)
class Replanner:
    """Checks a served model's plan every `interval` s (StatelessService.run runs `run`) and applies a re-plan."""

    model: str
    pool: WorkerPool
    base: FragmentSpec  # what every fragment of the model shares (weights, dtype)
    service: object  # the StatelessService
    supervisor: object  # its Supervisor: restarts the replicas of whichever plan runs
    report: PlanReport
    signature: tuple  # the model's inputs and outputs as the front doors check them: a new plan must keep them
    warm: Callable[[Replica, object], Awaitable[None]]  # one real call through a new replica with its executor
    interval: float
    load_timeout: float
    call_timeout: float
    left: set[str] = field(default_factory=set)  # strategies this model switched away from
    refused: dict[str, str] = field(default_factory=dict)  # strategy -> why it could not be brought up
    generation: int = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> bool:
        """Re-costs the running plan; applies the better one where there is one. True when it switched."""
        if self.service.restarting or not self.service.accepting:
            return False  # a replica on its way back belongs to the running plan: switch once it is back
        verdict = self.report.verdict(MIN_CALLS)
        if verdict is None or not verdict.mispredicted or verdict.better is None:
            return False
        target = verdict.better
        if target in self.left or target in self.refused:
            return False
        plan = verdict.plans[target]
        why = not_runnable(plan) or self._missing_worker(plan)
        if why:
            self._refuse(target, why)
            return False
        try:
            await self.apply(plan, verdict)
        except (GenieError, OSError, ValueError) as exc:
            self._refuse(target, f"bringing its fragments up failed: {exc}")
            return False
        return True

    async def apply(self, new: Plan, verdict: Replan) -> None:
        old = self.report.plan
        plan = relabel(new, self.generation + 1, 1 + max(f.replica for f in old.fragments))
        specs = specs_for(plan, self.base)
        try:  # a load that fails half-way leaves fragments loaded on some workers: free them all
            replicas, infos = await load_replicas(plan, self.pool, specs, self.load_timeout)
            execute, info = executor_for(plan, infos)
            if signature(info) != self.signature:
                raise ValueError(f"the {plan.strategy} plan serves other inputs or outputs than the running one")
            await asyncio.gather(*(self.warm(r, execute) for r in replicas.values()))
            loaded = dict(zip([f.fragment_id for g in plan.replicas() for f in g], infos, strict=True))
            await self.report.adopt(plan, execute.meters, loaded, self.call_timeout)
        except BaseException:
            await self._unload(plan)
            raise
        self.generation += 1
        started = time.time()
        running = self.service.switch(replicas, execute)
        self.supervisor.plan, self.supervisor.specs = plan, specs
        self.left.add(old.strategy)
        log.warning("model %s: re-planned from %s to %s (measured %s the predictions; re-costed, %s promises "
                    "%.0f requests/s against %.0f): new requests run on %s, %d batch(es) in flight finish on the "
                    "old fragments", self.model, old.strategy, plan.strategy,
                    ", ".join(f"{w} {r:.2f}x" for w, r in sorted(verdict.mismatch.items())), plan.strategy,
                    verdict.candidates[plan.strategy], verdict.candidates.get(old.strategy, 0.0),
                    ", ".join(sorted(replicas)), len(running))
        record = {"from": old.strategy, "to": plan.strategy, "at_unix_s": started, "mismatch": verdict.mismatch,
                  "candidates_requests_per_s": verdict.candidates, "batches_in_flight_at_switch": len(running),
                  "old_fragments": [f.fragment_id for f in old.fragments],
                  "new_fragments": [f.fragment_id for f in plan.fragments], "old_released": False}
        self.report.switches.append(record)
        if running:
            await asyncio.wait(running, timeout=2 * self.call_timeout)  # each call ends by its own timeout
        await self._unload(old)
        record["old_released"] = True
        record["drained_s"] = time.time() - started
        log.info("model %s: the %s plan's batches have finished; its fragments are unloaded", self.model,
                 old.strategy)

    def _missing_worker(self, plan: Plan) -> str | None:
        absent = sorted({f.worker for f in plan.fragments} - set(self.pool.clients))
        return f"it places fragments on {', '.join(absent)}, which this genie-serve did not start" if absent else None

    def _refuse(self, strategy: str, why: str) -> None:
        self.refused[strategy] = why
        log.warning("model %s: re-costing favours %s, but it is not applied: %s; the running plan keeps serving",
                    self.model, strategy, why)

    async def _unload(self, plan: Plan) -> None:
        for f in plan.fragments:
            try:
                await self.pool.clients[f.worker].unload_fragment(f.fragment_id, timeout=self.load_timeout)
            except NotFound:
                pass  # never loaded (a failed bring-up), or its worker restarted
            except GenieError as exc:
                log.warning("model %s: could not unload fragment %s from %s: %s", self.model, f.fragment_id,
                            f.worker, exc)


def relabel(plan: Plan, generation: int, first_replica: int) -> Plan:
    """The plan with fragment ids and replica numbers of its own generation, so that its fragments load beside
    the running plan's on the same workers and its replicas are told apart from theirs."""
    ids = {f.fragment_id: f"{f.fragment_id}@g{generation}" for f in plan.fragments}
    fragments = [dataclasses.replace(f, fragment_id=ids[f.fragment_id], replica=f.replica + first_replica)
                 for f in plan.fragments]
    transfers = [dataclasses.replace(t, src=ids.get(t.src, t.src), dst=ids.get(t.dst, t.dst)) for t in plan.transfers]
    return dataclasses.replace(plan, fragments=fragments, transfers=transfers)


def signature(info: FragmentInfo) -> tuple:
    """What the front doors check a request against: input and output names and dtypes."""
    return (tuple(sorted((s.name, s.dtype) for s in info.inputs)),
            tuple(sorted((s.name, s.dtype) for s in info.outputs)))
