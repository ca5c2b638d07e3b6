"""The router loop: one asyncio task owns the scheduler and drives the workers.

Front doors talk to it through `submit()` / `abort()`, which only queue commands; the loop applies them
between steps, so scheduler state has exactly one writer. Replicas step independently: whenever one is idle
the loop plans its next batched Step and sends it; when a step returns (a command in the same inbox), its
sampled tokens go back to the scheduler and text streams to the clients. So a replica busy with a long prefill
never holds back another replica's decodes, which is what prefill/decode disaggregation is for: a prefill
replica's finished prompts move to a decode replica by one KV handoff, worker to worker (handoffs.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from genie.errors import GenieError, NotFound, ResourceExhausted, Unavailable
from genie.workers.contract import SamplingParams, SeqResult

from .choices import choice_sampling, is_member_of, member_ids
from .handoffs import HandoffDriver
from .metrics import Metrics
from .replica import Replica, not_ready_reasons, replicas_ready
from .router_failures import ReplicaFailures
from .router_gauges import Gauges, prefilled_tokens
from .request import FinishReason, Request
from .scheduler import Scheduler
from .step_plan import StepPlan, TokenEvent
from .submission import Delta, GenerationRequest, Submission, Tracked, worker_sampling
from .tokenizer import TextStream, Tokenizer

__all__ = ["Delta", "GenerationRequest", "Router", "Submission"]

log = logging.getLogger("genie.serve")


class Router(ReplicaFailures):
    def __init__(
        self,
        scheduler: Scheduler,
        replicas: dict[str, Replica],
        tokenizer: Tokenizer,
        metrics: Metrics,
        *,
        step_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_replica_down: Callable[[str, str], None] | None = None,
        handoff_lease_s: float = 10.0,
        kv_bytes_per_token: int = 0,
        restart_wait_s: float | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.replicas = replicas
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.step_timeout = step_timeout
        # With no replica left alive, moved requests wait this long for a restarted one, then end.
        self.restart_wait_s = restart_wait_s
        self.clock = clock
        self.accepting = True
        self._inbox: asyncio.Queue[tuple] = asyncio.Queue()
        self._tracked: dict[str, Tracked] = {}
        self._releases: dict[str, list[str]] = {}  # replica -> sequences to Release before the next step
        self._steps: dict[str, asyncio.Task] = {}  # replica -> its Step in flight
        self.handoffs = HandoffDriver(replicas, metrics, self._inbox, handoff_lease_s, kv_bytes_per_token)
        self._on_replica_down = on_replica_down
        self._idle = asyncio.Event()
        self._idle.set()
        self._gauges = Gauges(metrics, scheduler, lambda: self.clock(), lambda: len(self.handoffs))

    @property
    def ready(self) -> bool:
        """Ready while taking requests with at least one replica that can serve them."""
        return replicas_ready(self.accepting, self.replicas)

    def not_ready_reasons(self) -> list[str]:
        return not_ready_reasons(self.accepting, self.replicas)

    def holds_nothing_on(self, replica: str) -> bool:
        """No request, step or Release of ours is on that replica now, so its workers should hold no sequence."""
        return (replica not in self._steps and not self._releases.get(replica) and not self.handoffs.involves(replica)
                and self.scheduler.num_on(replica) == 0)

    def submit(self, gen: GenerationRequest) -> Submission:
        """Queues a request; raises ResourceExhausted when the queue is full, Unavailable when draining."""
        if not self.accepting:
            raise Unavailable("the server is shutting down and takes no new requests")
        if not any(r.alive for r in self.replicas.values()):
            raise Unavailable("no worker replica is alive; see /health/ready")
        waiting = self.scheduler.num_waiting() + self._inbox.qsize()
        if waiting + gen.n > self.scheduler.config.max_queue:
            self.metrics.rejected.inc()
            raise ResourceExhausted(
                f"the server is busy: {waiting} requests are waiting (max_queue is "
                f"{self.scheduler.config.max_queue}); retry later"
            )
        sampling = worker_sampling(gen, self.tokenizer)
        # Unguessable and unique across restarts: the id names the request's KV on the worker link too.
        request_id = f"req-{secrets.token_hex(12)}"
        sub = Submission(request_id, len(gen.prompt_ids), choices=gen.n)
        for index, seq_id in enumerate(member_ids(request_id, gen.n)):
            self._add(seq_id, gen, choice_sampling(sampling, index), Tracked(
                sub, TextStream(self.tokenizer, stop=gen.stop, prompt_tail=gen.prompt_ids[-4:],
                                 min_tokens=sampling.min_tokens),
                sampling.logprobs > 0, self.clock(), index=index))
        return sub

    def _add(self, seq_id: str, gen: GenerationRequest, sampling: SamplingParams, tracked: Tracked) -> None:
        request = Request(
            seq_id,
            list(gen.prompt_ids),
            sampling=sampling,
            max_tokens=gen.max_tokens,
            eos_token_ids=self.tokenizer.eos_token_ids,
            ignore_eos=gen.ignore_eos,
            stop_token_ids=frozenset(gen.stop_token_ids),
        )
        self._idle.clear()
        self._inbox.put_nowait(("add", request, tracked))

    def abort(self, request_id: str) -> None:
        """The client went away: stop generating and free its KV."""
        self._inbox.put_nowait(("abort", request_id))

    def replica_lost(self, name: str, reason: str) -> None:
        """A health check found a worker of this replica dead or hung: its step in flight, if any, is given
        up now rather than at the step timeout, so the other replicas' streams do not wait for it."""
        self._inbox.put_nowait(("fail", name, reason))
        task = self._steps.get(name)
        if task is not None and not task.done():
            task.cancel(f"replica {name} was lost: {reason}")

    def replica_back(self, replica: Replica) -> None:
        """A restarted replica (fresh workers, fragments loaded and warmed) rejoins routing."""
        self._inbox.put_nowait(("rejoin", replica))

    def stop_accepting(self) -> None:
        """The drain begins: new requests get Unavailable, admitted ones run on."""
        self.accepting = False

    def abort_all(self, reason: str) -> None:
        """Ends every admitted request with finish_reason abort (the drain's grace period is over)."""
        self._inbox.put_nowait(("abort_all", reason))

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        try:
            while True:
                busy = bool(self._steps) or bool(self.handoffs)
                if not self.scheduler.has_work() and not busy:
                    await self._flush_releases()
                    self._update_gauges(force=True)
                    if self._inbox.empty():
                        self._idle.set()
                await self._apply_commands(wait=not self.scheduler.has_work() and not busy)
                if not await self._start_steps() and (self._steps or self.handoffs or self.scheduler.has_work()):
                    await self._apply_commands(wait=True)  # nothing can start until a step returns or a command comes
                self._update_gauges()
        finally:
            self._gauges.close()
            for task in [*self._steps.values(), *self.handoffs.tasks()]:
                task.cancel("the router stopped")

    async def _start_steps(self) -> bool:
        """Plans and sends the next step of every live replica with none in flight; True if anything changed."""
        changed = False
        for name in sorted(self.replicas):
            if name in self._steps or not self.replicas[name].alive or name not in self.scheduler.blocks.replicas:
                continue
            if self.scheduler.has_work():
                plan = self.scheduler.schedule(idle={name})
                if plan.finished:
                    self._deliver(plan.finished, {})
                if plan.preempted:
                    for rid, replica in plan.preempted:
                        self._queue_release(replica, [rid])
                    self.metrics.preemptions.inc(len(plan.preempted))
                changed = changed or bool(plan.batches or plan.finished or plan.preempted or plan.handoffs)
            else:
                plan = None
            # Every release and eviction reaches its worker before the step or the KV import that may reuse
            # the freed blocks: one Release per idle replica carries those of the last step's ends and of this
            # plan (a handoff to a busy decode replica only takes blocks that need no eviction).
            targets = {move.target for move in plan.handoffs} if plan is not None else set()
            await self._flush_releases([name, *sorted(t for t in targets if t not in self._steps)])
            if plan is None:
                continue
            # The prefill worker's next step waits for its handoffs: its one engine thread would otherwise run
            # that step (a long prefill chunk, maybe) before their KV exports, and the decodes would wait for it.
            moves = [self.handoffs.start(move) for move in plan.handoffs if move.source == name]
            for move in plan.handoffs:
                if move.source != name:
                    self.handoffs.start(move)
            if plan.batches:
                # The flush above may have found this replica dead (a Release refused): the step then fails at
                # once, through the same path as a step the worker failed, and never waits on a lost worker.
                replica = self.replicas[name]
                self._steps[name] = asyncio.create_task(
                    self._step_task(name, replica, plan, moves), name=f"step-{name}")
        return changed

    async def _step_task(self, name: str, replica: Replica, plan: StepPlan,
                         after: list[asyncio.Task] | None = None) -> None:
        try:
            if after:
                await asyncio.wait(after)  # each ends by itself: the SendKV has a timeout of its lease
            if not replica.alive:
                raise Unavailable(f"replica {name} went down before its step was sent: {replica.failure}")
            outcome: dict[str, SeqResult] | BaseException = await self._step_replica(replica, plan)
        except BaseException as exc:  # noqa: BLE001 - the loop decides what a failure means (a cancel too)
            outcome = exc
        self._inbox.put_nowait(("stepped", name, replica, plan, outcome))

    async def _apply_commands(self, wait: bool) -> None:
        if wait:
            await self._handle(await self._inbox.get())
        while not self._inbox.empty():
            await self._handle(self._inbox.get_nowait())

    async def _handle(self, command: tuple) -> None:
        if command[0] == "stepped":
            await self._finish_step(*command[1:])
        elif command[0] == "handed":
            release_on = self.scheduler.handoff_done(command[1].request_id, self.handoffs.finish(*command[1:]))
            if release_on is not None:
                self._queue_release(release_on, [command[1].request_id])
        else:
            self._apply(command)

    def _apply(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, request, tracked = command
            try:
                self.scheduler.add(request)
            except GenieError as exc:
                self._close(tracked, FinishReason.ERROR, exc)  # the user's error keeps its type and status
                return
            self._tracked[request.request_id] = tracked
        elif kind == "abort":
            members = [command[1]] if command[1] in self._tracked else [
                rid for rid in self._tracked if is_member_of(rid, command[1])]  # the choices of an n > 1
            for rid in members:
                self._abort(rid)
        elif kind == "fail":
            self._fail_replica(command[1], command[2])
        elif kind == "rejoin":
            self._rejoin(command[1])
        elif kind == "abort_all":
            self._abort_all(command[1])
        elif kind == "restart_overdue":
            self._restart_overdue(command[1], command[2])

    def _abort(self, request_id: str) -> None:
        self._tracked.pop(request_id)
        replica = self.scheduler.abort(request_id)
        self.metrics.requests.labels(FinishReason.ABORT.value).inc()
        if replica is not None:
            self._queue_release(replica, [request_id])

    async def _finish_step(self, name: str, replica: Replica, plan: StepPlan,
                           outcome: dict[str, SeqResult] | BaseException) -> None:
        self._steps.pop(name, None)
        results: dict[str, SeqResult] = {}
        if replica is not self.replicas[name]:
            # A step of a replica since replaced by its restart: its requests moved when it failed, and its
            # failure is not the new replica's.
            self.scheduler.discard(plan)
            return
        if isinstance(outcome, asyncio.CancelledError):
            self._fail_replica(name, f"its step was given up: {outcome.args[0] if outcome.args else 'cancelled'}")
        elif isinstance(outcome, (Unavailable, NotFound)):
            # NotFound: the worker lost the fragment or the sequences' KV; the replica's state is gone.
            self._fail_replica(name, str(outcome))
        elif isinstance(outcome, GenieError) and len(plan.batches[name]) > 1:
            # The worker checks a whole batch before it changes any state, so the batch can be retried
            # one sequence at a time: only the sequences that fail alone fail.
            results.update(await self._isolate(name, plan, outcome))
        elif isinstance(outcome, BaseException):
            self._fail_batch(name, plan, outcome)
        else:
            results.update(outcome)
            prefilled = prefilled_tokens(plan.batches[name], self._tracked)
            if prefilled:
                self.metrics.prompt_tokens.inc(prefilled)
        sampled = {rid: r.token_id for rid, r in results.items() if r.token_id is not None}
        events = self.scheduler.update(plan, sampled)
        # The next steps go out before this step's tokens are detokenized and streamed, so that work overlaps
        # the workers' compute. The sequences this step ended are queued for Release first: the next step may
        # reuse their blocks, and each replica's Release reaches its worker before its next step. A request
        # that a stop string ends below has already been planned into its replica's next step: that one token
        # is computed and dropped, and its KV is released after it.
        for event in events:
            if event.release_from is not None:
                self._queue_release(event.release_from, [event.request_id])
        await self._start_steps()
        self._deliver(events, results, released=True)

    async def _step_replica(self, replica: Replica, plan: StepPlan) -> dict[str, SeqResult]:
        seqs = [s.to_seq_step() for s in plan.batches[replica.name]]
        results = await replica.step(seqs, timeout=self.step_timeout)
        return {r.seq_id: r for r in results}

    def _abort_all(self, reason: str) -> None:
        for rid in list(self._tracked):
            tracked = self._tracked.pop(rid)
            release_from = self.scheduler.abort(rid)
            if release_from is not None:
                self._queue_release(release_from, [rid])
            self._close(tracked, FinishReason.ABORT, Unavailable(reason))

    def _deliver(self, events: list[TokenEvent], results: dict[str, SeqResult], released: bool = False) -> None:
        """Streams the events' tokens and ends; `released`: the events' own Releases are queued already."""
        now = self.clock()
        releases: dict[str, list[str]] = {}
        generated = 0
        for event in events:
            tracked = self._tracked.get(event.request_id)
            release_from, reason, detail = event.release_from, event.finish_reason, event.detail
            if released:
                release_from = None
            delta = Delta()
            if tracked is not None:
                delta.index = tracked.index
            if tracked is not None and event.token_id is not None:
                generated += 1
                self._time_token(tracked, now)
                delta.token_ids.append(event.token_id)
                delta.text = tracked.stream.push(event.token_id)
                if tracked.want_logprobs and event.request_id in results:
                    delta.logprobs.append(results[event.request_id])
                if tracked.stream.stopped and not event.finished:
                    release_from = self.scheduler.finish(event.request_id, FinishReason.STOP)
                    reason = FinishReason.STOP
            if release_from is not None:
                releases.setdefault(release_from, []).append(event.request_id)
            if tracked is None:
                continue
            if reason is not None:
                self._tracked.pop(event.request_id, None)
                delta.text += tracked.stream.finish()
                failure = Unavailable(detail or "the request could not run") if reason is FinishReason.ERROR else None
                self._close(tracked, reason, failure, delta)
            elif delta.text or delta.token_ids:
                tracked.submission.completion_tokens += len(delta.token_ids)
                tracked.submission.queue.put_nowait(delta)
        if generated:
            self.metrics.observe_tokens(now, generated)
        for replica, ids in releases.items():
            self._queue_release(replica, ids)

    def _time_token(self, tracked: Tracked, now: float) -> None:
        if tracked.last_token is None:
            self.metrics.ttft.observe(now - tracked.submitted)
        else:
            self.metrics.tpot.observe(now - tracked.last_token)
        tracked.last_token = now

    def _close(self, tracked: Tracked, reason: FinishReason, failure: GenieError | None,
               delta: Delta | None = None) -> None:
        delta = delta or Delta(index=tracked.index)
        delta.finish_reason = reason.value
        delta.failure = failure
        tracked.submission.completion_tokens += len(delta.token_ids)
        tracked.submission.queue.put_nowait(delta)
        self.metrics.requests.labels(reason.value).inc()
        self.metrics.e2e.observe(self.clock() - tracked.submitted)

    def _queue_release(self, replica: str, ids: list[str]) -> None:
        self._releases.setdefault(replica, []).extend(ids)

    async def _flush_releases(self, replicas: list[str] | None = None) -> None:
        """One Release per replica (all, or those given: idle ones) for everything that ended or was preempted
        there since its last step, and the cached blocks the scheduler evicted to make room."""
        names = list(self._releases) if replicas is None else [r for r in replicas if r in self._releases]
        pending = {name: self._releases.pop(name) for name in names}
        evictions = self.scheduler.take_evictions(replicas)
        names = sorted(pending.keys() | evictions.keys())
        if names:
            await asyncio.gather(*(self._release(r, pending.get(r, []), evictions.get(r, [])) for r in names))

    async def _release(self, name: str, ids: list[str], evict: list[bytes]) -> None:
        replica = self.replicas[name]
        if not replica.alive:
            return
        try:
            await replica.release(ids, timeout=self.step_timeout, evict=evict)
        except Unavailable as exc:
            self._fail_replica(name, str(exc))
        except GenieError as exc:
            log.warning("releasing %d sequences on replica %s failed: %s", len(ids), name, exc)

    def _update_gauges(self, force: bool = False) -> None:
        self._gauges.publish(force)
