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
whose next blocks are being filled on its replica by a step planned just now waits one step, so a burst
sharing a prompt computes it once instead of once per request.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from genie.config import ServingConfig
from genie.errors import AlreadyExists, ConfigError, InvalidRequest, NotFound, ResourceExhausted
from genie.serving.block_manager import BlockManager, Match
from genie.serving.request import FinishReason, Phase, Request
from genie.serving.step_plan import PlanBuilder, StepPlan, TokenEvent


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_batch_tokens: int = 2048  # tokens per step across all sequences
    max_running_requests: int = 64  # admitted requests at once, so also sequences per step
    max_queue: int = 256  # waiting requests beyond which add() raises ResourceExhausted
    prefill_chunk_tokens: int = 512  # longest prefill chunk of one request per step
    max_context: int = 8192  # prompt + output tokens one request may reach (the model's context)
    migration_limit: int = 0  # moves of one request to another replica when its replica fails; 0 ends it
    prefix_caching: bool = True  # reuse the cached KV blocks of a shared prefix

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_running_requests", "prefill_chunk_tokens", "max_context"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"scheduler {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_queue", "migration_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"scheduler {name} must be >= 0, got {getattr(self, name)}")
        if self.prefill_chunk_tokens > self.max_batch_tokens:
            raise ConfigError(
                f"scheduler prefill_chunk_tokens ({self.prefill_chunk_tokens}) must be <= max_batch_tokens "
                f"({self.max_batch_tokens})"
            )

    @classmethod
    def from_serving(cls, serving: ServingConfig, max_context: int) -> SchedulerConfig:
        """The serving section of the YAML config plus the model's context length (from the workers)."""
        return cls(
            max_batch_tokens=serving.max_batch_tokens,
            max_running_requests=serving.max_running_requests,
            max_queue=serving.max_queue,
            prefill_chunk_tokens=serving.prefill_chunk_tokens,
            max_context=max_context,
            migration_limit=serving.migration_limit,
            prefix_caching=serving.prefix_caching,
        )


@dataclass(frozen=True, slots=True)
class ReplicaFailure:
    """What fail_replica did: requests moved back to the queue for another replica, and those it ended."""

    migrated: list[Request]
    failed: list[Request]


ROUTE_SLACK = 8  # running requests a replica may have beyond the least loaded one and still win on its cache


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, replicas: dict[str, int], block_size: int,
                 seeds: dict[str, bytes] | None = None) -> None:
        """replicas: name -> number of KV blocks of `block_size` tokens on that worker replica; seeds: name ->
        what decides its KV besides the tokens (model, fragments, dtype), for the prefix cache's block names."""
        self.config = config
        self.blocks = BlockManager(replicas, block_size, caching=config.prefix_caching, seeds=seeds)
        self._requests: dict[str, Request] = {}  # live ones: queued, prefill or decode
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # in admission order
        self._failed_replicas: set[str] = set()
        self._ended: Counter[Phase] = Counter()
        self._arrivals = 0
        self._admissions = 0
        self._step = 0
        self._in_flight: StepPlan | None = None

    def add(self, request: Request) -> None:
        """Queue a new request; raises InvalidRequest, AlreadyExists or ResourceExhausted (retry later)."""
        self._validate(request)
        if len(self._waiting) >= self.config.max_queue:
            raise ResourceExhausted(
                f"the server is busy: {len(self._waiting)} requests are already waiting (max_queue is "
                f"{self.config.max_queue}); retry later"
            )
        request.arrival = self._arrivals
        self._arrivals += 1
        self._requests[request.request_id] = request
        self._waiting.append(request)

    def schedule(self) -> StepPlan:
        """Plan the next step. A plan with sequences must go back through update() before the next one."""
        if self._in_flight is not None:
            raise RuntimeError(f"step {self._in_flight.step} is still in flight: call update() with it first")
        self._step += 1
        builder = PlanBuilder(self._step, self.config.max_batch_tokens, self.config.max_running_requests)
        self._schedule_running(builder)
        self._admit_waiting(builder)
        plan = builder.build()
        if plan.num_seqs:
            self._in_flight = plan
            self.blocks.seal()
        return plan

    def update(self, plan: StepPlan, sampled: dict[str, int]) -> list[TokenEvent]:
        """Apply a step's results: sampled maps request_id -> token for every seq with sample=True.

        Sequences of requests that ended while the step was in flight (abort, finish, failed replica) are
        skipped, and so are their tokens. Events come in plan order: replicas by name, then batch order.
        """
        if plan is not self._in_flight:
            raise ValueError(f"update() needs the plan of the step in flight, got step {plan.step}")
        self._check_sampled(plan, sampled)
        self._in_flight = None
        events: list[TokenEvent] = []
        for replica, seq in plan.seqs():
            if not self._still_on(seq.request_id, replica):
                continue
            req = self._requests[seq.request_id]
            assert seq.position == req.num_computed, f"{req.request_id}: position {seq.position} is stale"
            req.num_computed += seq.num_tokens
            self.blocks.commit(req)
            if seq.sample:
                events.append(self._append_token(req, sampled[seq.request_id]))
        return events

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
        output elsewhere, so its stream goes on with no token lost or repeated. The others end with ERROR.
        """
        if replica in self._failed_replicas:
            return ReplicaFailure([], [])
        self.blocks.num_blocks(replica)  # raises NotFound for a name we never knew
        placed = [req for req in self._requests.values() if req.replica == replica]
        others = any(name != replica for name in self.blocks.replicas)
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

    def take_evictions(self) -> dict[str, list[bytes]]:
        """{replica: cached block names its workers must evict}, each once; send them with the next Release."""
        return self.blocks.take_evictions()

    def get(self, request_id: str) -> Request:
        req = self._requests.get(request_id)
        if req is None:
            raise NotFound(f"no live request {request_id!r} (it may have finished already)")
        return req

    def _validate(self, request: Request) -> None:
        rid = request.request_id
        if rid in self._requests:
            raise AlreadyExists(f"request id {rid!r} is already in use; use a unique id per request")
        if request.phase is not Phase.QUEUED or request.num_computed or request.replica is not None:
            raise InvalidRequest(f"request {rid!r} was already scheduled; build a new Request to resubmit")
        if not request.prompt_ids:
            raise InvalidRequest(f"request {rid!r} has an empty prompt; give at least one token")
        if request.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {request.max_tokens}")
        if request.num_tokens >= self.config.max_context:
            raise InvalidRequest(
                f"the prompt has {request.num_tokens} tokens but the model's context is "
                f"{self.config.max_context} tokens, which leaves no room for output; shorten the prompt"
            )
        largest = max((self.blocks.capacity_tokens(r) for r in self.blocks.replicas), default=0)
        if self.blocks.replicas and request.num_tokens > largest:
            raise InvalidRequest(
                f"the prompt has {request.num_tokens} tokens but the largest KV cache holds {largest} tokens "
                f"per sequence; shorten the prompt to at most {largest} tokens"
            )

    def _schedule_running(self, builder: PlanBuilder) -> None:
        decodes = [req for req in self._running if req.phase is Phase.DECODE]
        prefills = [req for req in self._running if req.phase is Phase.PREFILL]
        for req in decodes + prefills:
            if builder.full:
                return
            if req.phase is not Phase.QUEUED:  # it may have been preempted earlier in this step
                self._schedule_one(req, builder)

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

    def _admit_waiting(self, builder: PlanBuilder) -> None:
        """Admit waiting requests in order; a replica that cannot take its next one takes no later ones."""
        blocked: set[str] = set()
        for req in list(self._waiting):
            if builder.full or len(self._running) >= self.config.max_running_requests:
                return
            if req.replica is not None:  # preempted: it goes back where its output was sent from
                if req.replica not in blocked:
                    match = self.blocks.match(req, req.replica)
                    if match.pending or not self._try_admit(req, req.replica, builder, match.cached):
                        blocked.add(req.replica)
                continue
            fits = [r for r in self.blocks.replicas if self.blocks.capacity_tokens(r) >= req.num_tokens]
            if not fits:
                builder.finish(self._end(req, Phase.FINISHED, FinishReason.ERROR, detail=self._no_fit(req)))
                continue
            open_ = [r for r in fits if r not in blocked]
            if not open_:
                return
            replica, match = self._route(req, open_)
            if match.pending:  # its prefix is being filled there right now: start from it next step
                blocked.add(replica)
            elif not self._try_admit(req, replica, builder, match.cached):
                return

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

    def _no_fit(self, req: Request) -> str:
        if not self.blocks.replicas:
            return "no worker replica is available to run this request"
        largest = max(self.blocks.capacity_tokens(r) for r in self.blocks.replicas)
        return (
            f"the request needs {req.num_tokens} tokens of KV but the largest KV cache of the live replicas "
            f"holds {largest} tokens per sequence"
        )

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
        reason, detail = self._stop_reason(req, token)
        if reason is None:
            return TokenEvent(req.request_id, token)
        return self._end(req, Phase.FINISHED, reason, token_id=token, detail=detail)

    def _stop_reason(self, req: Request, token: int) -> tuple[FinishReason | None, str | None]:
        assert req.replica is not None
        capacity = self.blocks.capacity_tokens(req.replica)
        if token in req.stop_token_ids or (not req.ignore_eos and token in req.eos_token_ids):
            return FinishReason.STOP, None
        if req.num_output >= req.max_tokens:
            return FinishReason.LENGTH, None
        if req.num_tokens >= self.config.max_context:
            return FinishReason.LENGTH, f"reached the model's context of {self.config.max_context} tokens"
        if req.num_tokens >= capacity:
            return FinishReason.LENGTH, (
                f"reached {capacity} tokens, all that one sequence can hold in replica {req.replica!r}'s KV cache"
            )
        return None, None

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
        self.blocks.forget(req.request_id)
        del self._requests[req.request_id]
        req.phase, req.finish_reason, req.detail = phase, reason, detail
        self._ended[phase] += 1
        return TokenEvent(req.request_id, token_id, True, reason, req.replica if held_kv else None, detail)
