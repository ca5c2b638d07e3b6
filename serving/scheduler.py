"""The scheduler: a pure state machine that turns queued requests into batched worker steps.

The router loop drives it: `schedule()` -> one batched Step per replica -> `update(plan, sampled)` -> stream
the events. It does no I/O and reads no clock, so tests drive it by hand.

Policy, per step: running decodes first (one token each), then running prefills in chunks of at most
`prefill_chunk_tokens`, then new requests first come first served, all under `max_batch_tokens` and
`max_running_requests`. When a replica runs out of blocks, the newest admitted request on it is preempted
by recompute: it frees its blocks, returns to the front of the queue with its output, and is later prefilled
again from prompt + output.

Prefix caching (block_manager.py): a request starts from the longest run of its blocks cached on its replica
and prefills only the rest. A new request goes to the replica holding the longest cached (or being-filled)
prefix of its tokens, among the replicas whose running requests are within ROUTE_SLACK (or half again) of the
least loaded; then the most free KV blocks, fewer running requests, and name decide. It stays there. A request
whose next blocks are being filled on its replica by a step planned just now waits one step when they are at
least half of what it would compute, so a burst sharing a prompt computes it once instead of once per request.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection
from os.path import commonprefix

from genie.errors import ConfigError, NotFound, ResourceExhausted
from genie.serving.admission import no_fit, stop_reason, validate
from genie.serving.block_manager import BlockManager, Match
from genie.serving.request import FinishReason, Phase, Request
from genie.serving.scheduler_config import (DECODE, MOVING, PREFILL, ROUTE_SLACK, WAITING, ReplicaFailure,
                                            SchedulerConfig)
from genie.serving.step_plan import KVHandoff, PlanBuilder, StepPlan, TokenEvent

__all__ = ["DECODE", "PREFILL", "ROUTE_SLACK", "ReplicaFailure", "Scheduler", "SchedulerConfig"]


def _reservation(request_id: str) -> str:
    return f"handoff:{request_id}"


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, replicas: dict[str, int], block_size: int,
                 seeds: dict[str, bytes] | None = None, roles: dict[str, str] | None = None) -> None:
        """replicas: name -> number of KV blocks of `block_size` tokens on that worker replica; seeds: name ->
        what decides its KV besides the tokens (model, fragments, dtype), for the prefix cache's block names;
        roles: name -> "prefill" or "decode" for disaggregated serving (a replica not named does both)."""
        bad = sorted(r for r in (roles or {}).values() if r not in (PREFILL, DECODE))
        if bad:
            raise ConfigError(f"replica roles are prefill or decode, got {bad[0]!r}")
        self.config = config
        self.roles = dict(roles or {})
        self.blocks = BlockManager(replicas, block_size, caching=config.prefix_caching, seeds=seeds)
        self._requests: dict[str, Request] = {}  # live ones: queued, prefill or decode
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # in admission order
        self._failed_replicas: set[str] = set()
        self._ended: Counter[Phase] = Counter()
        self._arrivals = 0
        self._admissions = 0
        self._step = 0
        self._in_flight: dict[int, StepPlan] = {}  # step -> its plan, until update()
        self._busy: set[str] = set()  # replicas with a step in flight
        self._moving: dict[str, str] = {}  # request_id -> decode replica its KV is being sent to
        self.handoff_fallbacks = 0  # handoffs that failed, so the decode side prefilled the request itself

    def add(self, request: Request) -> None:
        """Queue a new request; raises InvalidRequest, AlreadyExists or ResourceExhausted (retry later)."""
        validate(request, self.config, self.blocks, self._requests)
        if len(self._waiting) >= self.config.max_queue:
            raise ResourceExhausted(
                f"the server is busy: {len(self._waiting)} requests are already waiting (max_queue is "
                f"{self.config.max_queue}); retry later"
            )
        request.arrival = self._arrivals
        self._arrivals += 1
        self._requests[request.request_id] = request
        self._waiting.append(request)

    def schedule(self, idle: Collection[str] | None = None) -> StepPlan:
        """Plan the next step of the `idle` replicas (None: all of them, with no step in flight). Replicas step
        independently: a plan with sequences must go back through update() before its replicas are planned
        again, while the other replicas' plans are in flight."""
        if idle is None:
            if self._in_flight:
                raise RuntimeError(f"step {min(self._in_flight)} is still in flight: call update() with it first")
            idle = set(self.blocks.replicas)
        else:
            busy = sorted(self._busy.intersection(idle))
            if busy:
                raise RuntimeError(f"replica {busy[0]} has a step in flight: call update() with it first")
            idle = set(idle).intersection(self.blocks.replicas)
        self._step += 1
        builder = PlanBuilder(self._step, self.config.max_batch_tokens, self.config.max_running_requests)
        self._start_handoffs(builder, idle)
        self._schedule_running(builder, idle)
        self._admit_waiting(builder, idle)
        plan = builder.build()
        if plan.num_seqs:
            self._in_flight[plan.step] = plan
            self._busy.update(plan.batches)
            self.blocks.seal()
        return plan

    def update(self, plan: StepPlan, sampled: dict[str, int]) -> list[TokenEvent]:
        """Apply a step's results: sampled maps request_id -> token for every seq with sample=True.

        Sequences of requests that ended while the step was in flight (abort, finish, failed replica) are
        skipped, and so are their tokens. Events come in plan order: replicas by name, then batch order.
        """
        if self._in_flight.get(plan.step) is not plan:
            raise ValueError(f"update() needs the plan of a step in flight, got step {plan.step}")
        self._check_sampled(plan, sampled)
        del self._in_flight[plan.step]
        self._busy.difference_update(plan.batches)
        events: list[TokenEvent] = []
        for replica, seq in plan.seqs():
            if not self._still_on(seq.request_id, replica):
                continue
            req = self._requests[seq.request_id]
            assert seq.position == req.num_computed, f"{req.request_id}: position {seq.position} is stale"
            req.num_computed += seq.num_tokens
            self.blocks.commit(req)
            if seq.sample:
                event = self._append_token(req, sampled[seq.request_id])
                events.append(event)
                if not event.finished and self.roles.get(replica) == PREFILL and self._decoders() and not (
                        req.sampling.processes_logits or req.sampling.guided):  # (their state stays on the worker)
                    req.handoff = WAITING  # its decode goes to a decode replica, KV and all
        return events

    def discard(self, plan: StepPlan) -> None:
        """Forget a step in flight whose results do not count: it ran on a replica since replaced by its
        restart, whose requests were moved when it failed (a request placed on the new one is not touched)."""
        if self._in_flight.pop(plan.step, None) is not plan:
            raise ValueError(f"discard() needs the plan of a step in flight, got step {plan.step}")
        self._busy.difference_update(plan.batches)

    def handoff_done(self, request_id: str, delivered: bool) -> str | None:
        """The router's SendKV of a plan's KVHandoff returned. Delivered: the request decodes on the target
        from now on. Not delivered: the prefill worker freed its copy, so the request is prefilled again, on
        the decode replica if it is alive (counted in handoff_fallbacks). Returns a replica to Release the
        sequence on, when KV arrived for a request that ended meanwhile."""
        target = self._moving.pop(request_id, None)
        if target is None:
            raise ValueError(f"no KV handoff of request {request_id!r} is in flight")
        req = self._requests.get(request_id)
        key = _reservation(request_id)
        if req is None:  # it ended while its KV was on the way: free the target's blocks now that it has landed
            self.blocks.unreserve(key)
            return target if delivered and target in self.blocks.replicas else None
        req.handoff = req.handoff_to = None
        if delivered and target in self.blocks.replicas:
            req.replica = self.blocks.adopt(req, key)
            return None
        self.blocks.unreserve(key)
        self.handoff_fallbacks += 1
        self._running.remove(req)
        self.blocks.free(req)
        req.phase, req.num_computed = Phase.QUEUED, 0
        req.replica = target if target in self.blocks.replicas else None
        self._waiting.appendleft(req)
        return None

    def abort(self, request_id: str) -> str | None:
        """The client went away. Returns the replica to Release the request on, None if it held no KV."""
        req = self._requests.get(request_id)
        if req is None:
            return None
        return self._end(req, Phase.ABORTED, FinishReason.ABORT).release_from

    def finish(self, request_id: str, reason: FinishReason, detail: str | None = None) -> str | None:
        """End a request the router decided is done (e.g. a stop string); returns the replica to Release on."""
        req = self._requests.get(request_id)
        if req is None:
            return None
        return self._end(req, Phase.FINISHED, reason, detail=detail).release_from

    def fail_replica(self, replica: str, reason: str) -> ReplicaFailure:
        """A worker died: forget the replica; migrate or end every request placed on it.

        Its KV is gone with it. A request with moves left (`migration_limit`) and another live replica goes
        back to the front of the queue, unpinned, keeping its output: it is prefilled again from prompt +
        output elsewhere, so its stream goes on with no token lost or repeated. With `wait_for_restart` it
        goes back to the queue even when no other replica is live, for the restarted one. The others end
        with ERROR.
        """
        if replica in self._failed_replicas:
            return ReplicaFailure([], [])
        self.blocks.num_blocks(replica)  # raises NotFound for a name we never knew
        # A request whose KV is being sent away waits for handoff_done, which decides where it goes.
        placed = [req for req in self._requests.values() if req.replica == replica and req.handoff != MOVING]
        others = self.config.wait_for_restart or any(name != replica for name in self.blocks.replicas)
        migrated, failed = [], []
        for req in sorted(placed, key=lambda r: r.arrival, reverse=True):
            if others and req.num_migrations < self.config.migration_limit:
                self._requeue(req)
                migrated.append(req)
            else:
                failed.append(req)
                self._end(req, Phase.FINISHED, FinishReason.ERROR, detail=self._failure_detail(req, replica, reason))
        self.blocks.remove_replica(replica)
        self._failed_replicas.add(replica)
        return ReplicaFailure(migrated[::-1], failed[::-1])

    def _requeue(self, req: Request) -> None:
        """Back to the queue's front with no KV and no replica (its blocks went with the replica)."""
        if req in self._running:
            self._running.remove(req)
            self.blocks.free(req)
        else:
            self._waiting.remove(req)
        req.phase, req.num_computed, req.replica = Phase.QUEUED, 0, None
        req.num_migrations += 1
        self._waiting.appendleft(req)

    def _failure_detail(self, req: Request, replica: str, reason: str) -> str:
        detail = f"worker replica {replica!r} failed: {reason}"
        if self.config.migration_limit and req.num_migrations >= self.config.migration_limit:
            return f"{detail}; the request was already moved {req.num_migrations} times (serving.migration_limit)"
        if self.config.migration_limit:
            return f"{detail}; no other replica is left to move the request to"
        return detail

    def add_replica(self, replica: str, num_blocks: int, seed: bytes = b"") -> None:
        """A (restarted) worker replica joins with an empty KV cache."""
        self.blocks.add_replica(replica, num_blocks, seed)
        self._failed_replicas.discard(replica)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def num_on(self, replica: str) -> int:
        """Live requests placed on `replica` (running there, or preempted and waiting to go back)."""
        return sum(1 for req in self._requests.values() if req.replica == replica)

    def num_waiting(self) -> int:
        return len(self._waiting)

    def num_running(self) -> int:
        return len(self._running)

    def counts_by_phase(self) -> dict[str, int]:
        """Live requests per phase, plus how many finished and aborted since start."""
        counts = Counter(req.phase for req in self._requests.values()) + self._ended
        return {phase.value: counts[phase] for phase in Phase}

    def kv_usage(self) -> dict[str, tuple[int, int]]:
        """{replica: (used blocks, free blocks)}; evictable cached blocks count as free."""
        return self.blocks.usage()

    def take_evictions(self, replicas: Collection[str] | None = None) -> dict[str, list[bytes]]:
        """{replica: cached block names its workers must evict}, each once; send them with the next Release
        (with `replicas`, only theirs)."""
        return self.blocks.take_evictions(replicas)

    def get(self, request_id: str) -> Request:
        req = self._requests.get(request_id)
        if req is None:
            raise NotFound(f"no live request {request_id!r} (it may have finished already)")
        return req

    def _schedule_running(self, builder: PlanBuilder, idle: set[str]) -> None:
        decoders = bool(self._decoders())
        mine = [req for req in self._running if req.replica in idle and req.handoff != MOVING]
        decodes = [req for req in mine if req.phase is Phase.DECODE]
        prefills = [req for req in mine if req.phase is Phase.PREFILL]
        for req in decodes + prefills:
            if builder.full:
                return
            if req.handoff == WAITING:
                if decoders:
                    continue  # its decode replica takes it on that replica's turn
                req.handoff = None  # no decode replica is left: it decodes where it was prefilled
            if req.phase is not Phase.QUEUED:  # it may have been preempted earlier in this step
                self._schedule_one(req, builder)

    def _decoders(self) -> list[str]:
        if not self.roles:  # no disaggregation: asked twice a step, so the common case is answered at once
            return []
        return [r for r in self.blocks.replicas if self.roles.get(r) == DECODE]

    def _start_handoffs(self, builder: PlanBuilder, idle: set[str]) -> None:
        """Prefilled requests waiting for a decode replica move to the one with the most room for their KV,
        oldest first: their blocks are reserved there now, and the router sends the KV worker to worker right
        away, before the prefill replica's next step. A decode replica with a step in flight takes one only
        into never-used blocks: an eviction could not reach its worker before the KV does."""
        targets = self._decoders()
        for req in [r for r in self._running if r.handoff == WAITING]:
            if not targets:
                return
            fits = [r for r in targets if self.blocks.blocks_for(req.num_computed) < self.blocks.num_blocks(r)]
            if not fits:
                req.handoff = None  # no decode replica could hold it: it decodes where it was prefilled
                continue
            target = max(fits, key=lambda r: (r in idle or r not in self._busy, self.blocks.num_free(r), r))
            evict = target in idle or target not in self._busy
            names = self.blocks.reserve(_reservation(req.request_id), req, target, evict=evict)
            if names is None:
                return  # it waits for room; younger ones wait behind it
            assert req.replica is not None
            req.handoff, req.handoff_to = MOVING, target
            self._moving[req.request_id] = target
            builder.handoff(KVHandoff(req.request_id, req.replica, target, req.num_computed, *names,
                                      block_size=self.blocks.block_size))

    def _schedule_one(self, req: Request, builder: PlanBuilder) -> None:
        """Give req its next chunk, preempting the newest requests on its replica until it fits."""
        want = min(req.num_pending, self.config.prefill_chunk_tokens, builder.budget)
        while (n := min(want, self.blocks.max_new_tokens(req))) == 0:
            victim = max((r for r in self._running if r.replica == req.replica), key=lambda r: r.admitted)
            self._preempt(victim, builder)
            if victim is req:
                return
        builder.add(req, n, new_hashes=self.blocks.allocate(req, n))

    def _preempt(self, req: Request, builder: PlanBuilder) -> None:
        assert req.replica is not None
        self.blocks.free(req)
        self._running.remove(req)
        req.phase = Phase.QUEUED
        req.num_computed = 0
        req.num_preemptions += 1
        self._waiting.appendleft(req)
        builder.preempt(req.request_id, req.replica)

    def _admit_waiting(self, builder: PlanBuilder, idle: set[str]) -> None:
        """Admit waiting requests in order; a replica that cannot take its next one takes no later ones, and
        a request routed to a replica with a step in flight waits for that replica's turn."""
        blocked: set[str] = set()
        for req in list(self._waiting):
            if builder.full or len(self._running) >= self.config.max_running_requests:
                return
            if req.replica is not None:  # preempted: it goes back where its output was sent from
                if req.replica in idle and req.replica not in blocked:
                    match = self.blocks.match(req, req.replica)
                    if self._waits_for(req, req.replica, match) or not self._try_admit(
                            req, req.replica, builder, match.cached):
                        blocked.add(req.replica)
                continue
            fits = [r for r in self.blocks.replicas if self.blocks.capacity_tokens(r) >= req.num_tokens]
            if not fits:
                builder.finish(self._end(req, Phase.FINISHED, FinishReason.ERROR, detail=no_fit(req, self.blocks)))
                continue
            prefill = [r for r in fits if self.roles.get(r) != DECODE] or fits  # decode replicas only as a fallback
            open_ = [r for r in prefill if r not in blocked]
            if not any(r in idle for r in open_):
                return
            replica, match = self._route(req, open_)
            if replica not in idle:  # its place has a step in flight: the request waits for that replica's turn
                continue
            if self._waits_for(req, replica, match):  # its prefix is being filled there now: start from it next step
                blocked.add(replica)
            elif not self._try_admit(req, replica, builder, match.cached):
                return

    def _waits_for(self, req: Request, replica: str, match: Match) -> bool:
        """Wait a step for the blocks being filled on `replica` now when req shares at least half of what it
        would compute with a prefill running there: a burst sharing a long prompt computes it once, chunk after
        chunk. A short shared head (a chat template's first block) is computed again instead: waiting would cost
        the burst a step, and the request filling it would decode alone through the whole burst's prefill (a
        stall of that step's length in its stream)."""
        if not match.pending:
            return False
        ids = req.all_ids
        shared = max([(match.cached + match.pending) * self.blocks.block_size] + [
            len(commonprefix([ids, r.all_ids])) for r in self._running
            if r.replica == replica and r.phase is Phase.PREFILL])
        return 2 * shared >= req.num_tokens + match.cached * self.blocks.block_size

    def _route(self, req: Request, replicas: list[str]) -> tuple[str, Match]:
        running = Counter(r.replica for r in self._running)
        matches = {name: self.blocks.match(req, name) for name in replicas}
        least = min(running[name] for name in replicas)
        near = [name for name in replicas if running[name] <= least + max(ROUTE_SLACK, least // 2)]
        best = min(near, key=lambda name: (-(matches[name].cached + matches[name].pending),
                                           -self.blocks.num_free(name), running[name], name))
        return best, matches[best]

    def _try_admit(self, req: Request, replica: str, builder: PlanBuilder, cached_blocks: int) -> bool:
        if builder.was_preempted(req.request_id):
            return False  # freed this step for the running ones; it waits at the front for the next
        start = cached_blocks * self.blocks.block_size
        n = min(req.num_tokens - start, self.config.prefill_chunk_tokens, builder.budget)
        if not self.blocks.can_attach(req, replica, cached_blocks, n):
            return False
        self._waiting.remove(req)
        req.replica = replica
        req.phase = Phase.PREFILL
        req.admitted = self._admissions
        self._admissions += 1
        self._running.append(req)
        prefix = self.blocks.attach(req, replica, cached_blocks)
        req.num_computed = start
        builder.add(req, n, cached_prefix=prefix, new_hashes=self.blocks.allocate(req, n))
        return True

    def _still_on(self, request_id: str, replica: str) -> bool:
        """The request is live and still holds its KV on `replica` (not ended, preempted or migrated)."""
        req = self._requests.get(request_id)
        return req is not None and req.replica == replica and req.phase is not Phase.QUEUED

    def _check_sampled(self, plan: StepPlan, sampled: dict[str, int]) -> None:
        """Reject a bad result map before anything changes, so a router bug cannot corrupt state."""
        wanted = {seq.request_id for rep, seq in plan.seqs() if seq.sample and self._still_on(seq.request_id, rep)}
        missing = sorted(rid for rid in wanted if rid not in sampled)
        unasked = sorted(rid for rid in sampled if rid in self._requests and rid not in wanted)
        bad = sorted(rid for rid in wanted & sampled.keys() if not _is_token(sampled[rid]))
        if missing or unasked or bad:
            raise ValueError(
                f"step {plan.step} results do not match its plan: no token for {missing}, "
                f"tokens nobody asked for {unasked}, invalid token ids for {bad}"
            )

    def _append_token(self, req: Request, token: int) -> TokenEvent:
        req.output_ids.append(token)
        req.phase = Phase.DECODE
        reason, detail = stop_reason(req, token, self.config, self.blocks)
        if reason is None:
            return TokenEvent(req.request_id, token)
        return self._end(req, Phase.FINISHED, reason, token_id=token, detail=detail)

    def _end(
        self,
        req: Request,
        phase: Phase,
        reason: FinishReason,
        token_id: int | None = None,
        detail: str | None = None,
    ) -> TokenEvent:
        held_kv = req in self._running
        if held_kv:
            self._running.remove(req)
            self.blocks.free(req)
        else:
            self._waiting.remove(req)
        if req.handoff == MOVING:  # the prefill worker frees its copy itself; handoff_done frees the target's
            held_kv = False
        self.blocks.forget(req.request_id)
        del self._requests[req.request_id]
        req.phase, req.finish_reason, req.detail = phase, reason, detail
        self._ended[phase] += 1
        return TokenEvent(req.request_id, token_id, True, reason, req.replica if held_kv else None, detail)
