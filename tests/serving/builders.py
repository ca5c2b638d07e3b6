"""Builders for scheduler tests: a scheduler, requests, and fake workers that execute StepPlans.

`FakeWorkers` plays the worker side honestly: it keeps each sequence's KV as a token list per replica,
checks every chunk lands at the position the sequence holds, counts blocks the way the worker allocator
does (and fails past num_blocks), and samples with a deterministic "model" whose next token depends on all
previous ids, so a request's output does not depend on how it was batched, chunked or preempted.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from genie.serving.request import Request
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.serving.step_plan import StepPlan, TokenEvent
from genie.workers.engine.allocator import BlockAllocator
from genie.workers.engine.block_tables import BlockTables

VOCAB = 997

NextToken = Callable[[list[int]], int]


def hash_next_token(ids: list[int]) -> int:
    """The fake model: a stable hash of every id so far, folded into the vocabulary."""
    return zlib.crc32(",".join(map(str, ids)).encode()) % VOCAB


def make_scheduler(replicas: dict[str, int] | None = None, block_size: int = 4, **config: int) -> Scheduler:
    defaults = dict(
        max_batch_tokens=64, max_running_requests=8, max_queue=32, prefill_chunk_tokens=16, max_context=512
    )
    defaults.update(config)
    return Scheduler(SchedulerConfig(**defaults), replicas or {"r0": 64}, block_size)


def make_request(
    request_id: str,
    prompt: int | list[int] = 8,
    max_tokens: int = 8,
    eos: frozenset[int] = frozenset(),
    ignore_eos: bool = False,
) -> Request:
    """A request; an int prompt makes that many deterministic ids (never EOS)."""
    if isinstance(prompt, int):
        seed = zlib.crc32(request_id.encode())
        prompt = [1 + (seed + 31 * i) % (VOCAB - 1) for i in range(prompt)]
    return Request(request_id, list(prompt), max_tokens=max_tokens, eos_token_ids=eos, ignore_eos=ignore_eos)


def reference_output(req: Request, max_context: int, next_token: NextToken = hash_next_token) -> list[int]:
    """What the request should produce when run alone with room to spare."""
    ids, out = list(req.prompt_ids), []
    while True:
        token = next_token(ids)
        ids.append(token)
        out.append(token)
        stop = not req.ignore_eos and token in req.eos_token_ids
        if stop or len(out) >= req.max_tokens or len(ids) >= max_context:
            return out


@dataclass
class FakeWorkers:
    """Each replica's KV as the real worker keeps it (the workers' own BlockTables, so cached prefixes, shared
    blocks and evictions follow the worker's rules), with the token ids each sequence holds beside it."""

    replicas: dict[str, int]  # name -> num_blocks
    block_size: int
    next_token: NextToken = hash_next_token
    kv: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # replica -> seq -> ids in KV
    tables: dict[str, BlockTables] = field(default_factory=dict)
    prefixes: dict[bytes, list[int]] = field(default_factory=dict)  # block name -> ids up to that block's end
    prefix_hits: int = 0  # tokens sequences started from cached blocks

    def __post_init__(self) -> None:
        for name in self.replicas:
            self.lose(name)

    def lose(self, replica: str) -> None:
        """The replica's workers start over with an empty cache (a crash and a restart)."""
        self.kv[replica] = {}
        self.tables[replica] = BlockTables(BlockAllocator(self.replicas[replica]), self.block_size)

    def release(self, replica: str, seq_id: str) -> None:
        self.kv[replica].pop(seq_id, None)
        self.tables[replica].release([seq_id])

    def evict(self, evictions: dict[str, list[bytes]]) -> None:
        for replica, names in evictions.items():
            self.tables[replica].evict(names)

    def used_blocks(self, replica: str) -> int:
        tables = self.tables[replica]
        return tables.allocator.num_used - tables.num_evictable

    def step(self, plan: StepPlan, evictions: dict[str, list[bytes]] | None = None) -> dict[str, int]:
        for seq_id, replica in plan.preempted:
            self.release(replica, seq_id)
        self.evict(evictions or {})
        sampled: dict[str, int] = {}
        growths = {name: [] for name in self.replicas}
        for replica, seq in plan.seqs():
            tables = self.tables[replica]
            if seq.cached_prefix:
                assert seq.request_id not in tables, f"{seq.request_id}: cached prefix for a live sequence"
                assert not tables.missing(seq.cached_prefix), f"{seq.request_id}: its cached prefix is not cached"
                self.kv[replica][seq.request_id] = list(self.prefixes[seq.cached_prefix[-1]])
                self.prefix_hits += seq.position
            ids = self.kv[replica].setdefault(seq.request_id, [])
            assert seq.position == len(ids), f"{seq.request_id}: chunk at {seq.position}, KV holds {len(ids)}"
            needed = tables.blocks_needed(seq.request_id, seq.position + seq.num_tokens, len(seq.cached_prefix))
            assert needed <= tables.allocator.num_free, f"{replica} ran out of KV blocks"
            end = seq.position + seq.num_tokens
            growths[replica].append(tables.grow(seq.request_id, end, seq.cached_prefix, seq.new_block_hashes))
            ids.extend(seq.token_ids)
            first = seq.position // self.block_size
            for offset, name in enumerate(seq.new_block_hashes):
                if name:
                    self.prefixes.setdefault(name, ids[: (first + offset + 1) * self.block_size])
            if seq.sample:
                sampled[seq.request_id] = self.next_token(ids)
        for replica, done in growths.items():
            self.tables[replica].commit(done)
        return sampled


@dataclass
class Driver:
    """Runs the router's loop by hand: schedule, execute on fake workers, update, release."""

    scheduler: Scheduler
    workers: FakeWorkers
    outputs: dict[str, list[int]] = field(default_factory=dict)
    ended: dict[str, TokenEvent] = field(default_factory=dict)
    plans: list[StepPlan] = field(default_factory=list)

    @classmethod
    def build(cls, replicas: dict[str, int], block_size: int = 4, **config: int) -> Driver:
        scheduler = make_scheduler(replicas, block_size, **config)
        return cls(scheduler, FakeWorkers(dict(replicas), block_size))

    def step(self) -> list[TokenEvent]:
        plan = self.scheduler.schedule()
        self.plans.append(plan)
        events = list(plan.finished)
        evictions = self.scheduler.take_evictions()
        if plan.num_seqs:
            events += self.scheduler.update(plan, self.workers.step(plan, evictions))
        else:
            for seq_id, replica in plan.preempted:
                self.workers.release(replica, seq_id)
            self.workers.evict(evictions)
        for event in events:
            self._record(event)
        self.check_mirror()
        return events

    def run(self, max_steps: int = 10_000) -> int:
        steps = 0
        while self.scheduler.has_work():
            assert steps < max_steps, "the scheduler made no progress"
            self.step()
            steps += 1
        return steps

    def abort(self, request_id: str) -> None:
        replica = self.scheduler.abort(request_id)
        if replica is not None:
            self.workers.release(replica, request_id)

    def check_mirror(self) -> None:
        check_mirror(self.scheduler, self.workers)

    def _record(self, event: TokenEvent) -> None:
        if event.token_id is not None:
            self.outputs.setdefault(event.request_id, []).append(event.token_id)
        if event.finished:
            self.ended[event.request_id] = event
            if event.release_from is not None:
                self.workers.release(event.release_from, event.request_id)


def check_mirror(scheduler: Scheduler, workers: FakeWorkers) -> None:
    """The scheduler's block accounting equals what the workers hold, block for block, cached ones too."""
    for replica, (used, _free) in scheduler.kv_usage().items():
        assert used == workers.used_blocks(replica), f"{replica}: scheduler {used} blocks"
        tables, mirror = workers.tables[replica], scheduler.blocks.stats(replica)
        assert (mirror["cached"], mirror["evictable"], mirror["shared"]) == (
            tables.num_cached, tables.num_evictable, tables.num_shared), f"{replica}: {mirror}"


def import_kv(workers: FakeWorkers, replica: str, seq_id: str, ids: list[int], prefix: tuple[bytes, ...] = (),
              new_hashes: tuple[bytes, ...] = ()) -> None:
    """A KV handoff landing on `replica`, as the worker's ImportKV does it: the sequence starts from the cached
    blocks `prefix` (which must hold ids' first tokens), then blocks for the rest, the full ones named."""
    tables, size = workers.tables[replica], workers.block_size
    assert seq_id not in tables, f"{seq_id}: imported over a live sequence"
    assert not tables.missing(prefix), f"{seq_id}: its prefix is not cached on {replica}"
    if prefix:
        assert workers.prefixes[prefix[-1]] == ids[: len(prefix) * size], f"{seq_id}: the cached prefix differs"
    needed = tables.blocks_needed(seq_id, len(ids), len(prefix))
    assert needed <= tables.allocator.num_free, f"{replica}: no room for the KV"
    tables.commit([tables.grow(seq_id, len(ids), prefix, new_hashes)])
    for offset, name in enumerate(new_hashes):
        if name:
            workers.prefixes.setdefault(name, ids[: (len(prefix) + offset + 1) * size])
    workers.kv[replica][seq_id] = list(ids)


@dataclass
class ConcurrentDriver:
    """The router's loop with replicas stepping independently: any idle replica may be planned while others'
    steps and KV handoffs are in flight, and those come back in any order. Workers run a step when it is
    sent and the scheduler hears of it when it returns, as over gRPC; Releases reach a replica only while it
    is idle, as the router sends them."""

    scheduler: Scheduler
    workers: FakeWorkers
    outputs: dict[str, list[int]] = field(default_factory=dict)
    in_flight: dict[str, tuple[StepPlan, dict[str, int]]] = field(default_factory=dict)  # replica -> plan, sampled
    moving: dict[str, tuple] = field(default_factory=dict)  # request_id -> (KVHandoff, ids sent)
    releases: dict[str, list[str]] = field(default_factory=dict)
    delivered: int = 0
    failed: int = 0

    def start(self, replica: str) -> None:
        plan = self.scheduler.schedule(idle={replica})
        for event in plan.finished:
            self._record(event)
        for seq_id, where in plan.preempted:
            self.releases.setdefault(where, []).append(seq_id)
        # as the router: Releases (and evictions) reach this replica and every idle target of a handoff
        idle = [replica] + sorted({m.target for m in plan.handoffs} - set(self.in_flight) - {replica})
        for name in idle:
            for seq_id in self.releases.pop(name, []):
                self.workers.release(name, seq_id)
        self.workers.evict(self.scheduler.take_evictions(idle))
        for move in plan.handoffs:
            assert move.source != move.target and self.scheduler.roles[move.target] == "decode"
            self.moving[move.request_id] = (move, None)
        if plan.num_seqs:
            assert list(plan.batches) == [replica]
            self.in_flight[replica] = (plan, self.workers.step(plan))

    def finish(self, replica: str) -> None:
        plan, sampled = self.in_flight.pop(replica)
        for event in self.scheduler.update(plan, sampled):
            self._record(event)

    def hand(self, request_id: str, deliver: bool) -> None:
        """The SendKV returns: the source's copy is freed either way; delivered, the target holds it."""
        move, _ = self.moving.pop(request_id)
        ids = self.workers.kv[move.source].get(request_id)
        assert ids is not None and len(ids) == move.tokens, f"{request_id}: the source holds {ids}"
        self.workers.release(move.source, request_id)
        if deliver:
            import_kv(self.workers, move.target, request_id, ids, move.cached_prefix, move.new_block_hashes)
            self.delivered += 1
        else:
            self.failed += 1
        release = self.scheduler.handoff_done(request_id, deliver)
        if release is not None:
            self.releases.setdefault(release, []).append(request_id)

    def abort(self, request_id: str) -> None:
        replica = self.scheduler.abort(request_id)
        if replica is not None:
            self.releases.setdefault(replica, []).append(request_id)

    def quiet(self) -> bool:
        return not self.in_flight and not self.moving

    def flush(self) -> None:
        for replica, ids in self.releases.items():
            for seq_id in ids:
                self.workers.release(replica, seq_id)
        self.releases.clear()
        self.workers.evict(self.scheduler.take_evictions())

    def _record(self, event: TokenEvent) -> None:
        if event.token_id is not None:
            self.outputs.setdefault(event.request_id, []).append(event.token_id)
        if event.finished and event.release_from is not None:
            self.releases.setdefault(event.release_from, []).append(event.request_id)
