"""What one scheduler step asks of the workers, and what comes back to the clients.

`StepPlan` is the scheduler's output: one batch of sequence steps per replica, the sequences the router must
release on a worker before sending those batches (preempted ones), and requests that ended while planning.
`TokenEvent` is one thing to stream to a client. `PlanBuilder` keeps the step's token budget and seat count
while the scheduler fills a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genie.serving.request import FinishReason, Request
from genie.workers.contract import SamplingParams, SeqStep


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    """One sequence's share of a step: a prefill chunk (many tokens) or a decode (one token)."""

    request_id: str
    position: int  # tokens this sequence already holds in its replica's KV
    token_ids: list[int]
    sample: bool  # sample the next token after this chunk (final prefill chunk and every decode)
    sampling: SamplingParams
    cached_prefix: tuple[bytes, ...] = ()  # a new sequence starting from these cached KV blocks
    new_block_hashes: tuple[bytes, ...] = ()  # names of the KV blocks this chunk fills

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_seq_step(self) -> SeqStep:
        return SeqStep(
            seq_id=self.request_id,
            position=self.position,
            token_ids=list(self.token_ids),
            sample=self.sample,
            sampling=self.sampling,
            cached_prefix=self.cached_prefix,
            new_block_hashes=self.new_block_hashes,
        )


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A token for a client, the end of a request, or both.

    When `release_from` is set the request held KV on that replica and the router must Release it there
    (after any step in flight for it has returned).
    """

    request_id: str
    token_id: int | None
    finished: bool = False
    finish_reason: FinishReason | None = None
    release_from: str | None = None
    detail: str | None = None  # why it ended, for errors and limits the reason alone does not explain


@dataclass(frozen=True, slots=True)
class KVHandoff:
    """Disaggregation: send a prefilled request's KV from its prefill replica to a decode replica, which has
    its blocks reserved; the router reports the outcome with `Scheduler.handoff_done`."""

    request_id: str
    source: str  # the prefill replica holding the KV now
    target: str  # the decode replica that takes it
    tokens: int  # KV tokens the request holds: the prompt (and any output) written so far
    cached_prefix: tuple[bytes, ...] = ()  # its leading blocks the target has cached: not sent again
    new_block_hashes: tuple[bytes, ...] = ()  # names the target gives the full blocks it imports
    block_size: int = 16

    @property
    def skip_tokens(self) -> int:
        return len(self.cached_prefix) * self.block_size

    @property
    def sent_tokens(self) -> int:
        return self.tokens - self.skip_tokens


@dataclass(frozen=True, slots=True)
class StepPlan:
    step: int  # 1, 2, ... in schedule() order; update() checks it got the latest plan
    batches: dict[str, list[ScheduledSeq]]  # replica -> its batch; replicas by name, only non-empty ones
    preempted: list[tuple[str, str]] = field(default_factory=list)  # (request_id, replica) to Release first
    finished: list[TokenEvent] = field(default_factory=list)  # requests that ended while planning
    handoffs: list[KVHandoff] = field(default_factory=list)  # KV to move worker to worker, besides the step

    @property
    def num_tokens(self) -> int:
        return sum(seq.num_tokens for batch in self.batches.values() for seq in batch)

    @property
    def num_seqs(self) -> int:
        return sum(len(batch) for batch in self.batches.values())

    def seqs(self) -> list[tuple[str, ScheduledSeq]]:
        """Every (replica, seq) in the plan's deterministic order."""
        return [(replica, seq) for replica, batch in self.batches.items() for seq in batch]


class PlanBuilder:
    """Fills one StepPlan under a token budget and a limit on sequences per step."""

    def __init__(self, step: int, max_tokens: int, max_seqs: int) -> None:
        self.step = step
        self.budget = max_tokens
        self.seats = max_seqs
        self._seqs: dict[str, tuple[str, ScheduledSeq]] = {}  # request_id -> (replica, seq), in order
        self._preempted: list[tuple[str, str]] = []
        self._finished: list[TokenEvent] = []
        self._handoffs: list[KVHandoff] = []

    @property
    def full(self) -> bool:
        return self.budget <= 0 or self.seats <= 0

    def add(self, req: Request, n: int, cached_prefix: tuple[bytes, ...] = (),
            new_hashes: tuple[bytes, ...] = ()) -> None:
        assert req.replica is not None and 0 < n <= self.budget and self.seats > 0
        assert req.request_id not in self._seqs, f"{req.request_id} scheduled twice in one step"
        seq = ScheduledSeq(
            request_id=req.request_id,
            position=req.num_computed,
            token_ids=req.pending_ids(n),
            sample=n == req.num_pending,
            sampling=req.sampling,
            cached_prefix=cached_prefix,
            new_block_hashes=new_hashes,
        )
        self._seqs[req.request_id] = (req.replica, seq)
        self.budget -= n
        self.seats -= 1

    def preempt(self, request_id: str, replica: str) -> None:
        """Record a preemption and take back the request's share of this step if it already had one."""
        dropped = self._seqs.pop(request_id, None)
        if dropped is not None:
            self.budget += dropped[1].num_tokens
            self.seats += 1
        self._preempted.append((request_id, replica))

    def was_preempted(self, request_id: str) -> bool:
        return any(rid == request_id for rid, _ in self._preempted)

    def finish(self, event: TokenEvent) -> None:
        self._finished.append(event)

    def handoff(self, move: KVHandoff) -> None:
        self._handoffs.append(move)

    def build(self) -> StepPlan:
        batches: dict[str, list[ScheduledSeq]] = {}
        for replica, seq in self._seqs.values():
            batches.setdefault(replica, []).append(seq)
        ordered = {replica: batches[replica] for replica in sorted(batches)}
        return StepPlan(self.step, ordered, list(self._preempted), list(self._finished), list(self._handoffs))
