"""Replicas that step independently, and prefill/decode disaggregation, against fake workers.

Each seed draws replicas (some runs with a prefill and a decode role), a stream of requests sharing prompt
prefixes, and a random order in which replicas are planned, their steps come back, and KV handoffs land or
fail. Outputs must equal each request run alone, and whenever nothing is in flight the scheduler's block
accounting must equal the workers' block for block.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from builders import ConcurrentDriver, FakeWorkers, check_mirror, make_request, make_scheduler, reference_output

from genie.errors import InvalidRequest, ResourceExhausted
from genie.serving.request import FinishReason
from genie.serving.scheduler import DECODE, PREFILL, Scheduler, SchedulerConfig


def draw(rng: random.Random, disaggregated: bool) -> ConcurrentDriver:
    block_size = rng.choice([1, 2, 4, 8])
    count = 2 if disaggregated else rng.randint(1, 3)
    replicas = {f"r{i}": rng.randint(4, 40 // block_size + 4) for i in range(count)}
    budget = rng.randint(2, 40)
    config = SchedulerConfig(max_batch_tokens=budget, prefill_chunk_tokens=rng.randint(1, budget),
                             max_running_requests=rng.randint(1, 6), max_queue=rng.randint(1, 12),
                             max_context=rng.randint(8, 120))
    roles = {"r0": PREFILL, "r1": DECODE} if disaggregated else None
    scheduler = Scheduler(config, replicas, block_size, roles=roles)
    return ConcurrentDriver(scheduler, FakeWorkers(dict(replicas), block_size))


def act(rng: random.Random, drv: ConcurrentDriver, deliver_rate: float) -> None:
    """One thing happens: an idle replica is planned, a step returns, or a handoff lands or fails."""
    sched = drv.scheduler
    idle = [r for r in sched.blocks.replicas if r not in drv.in_flight]
    choices = [("start", r) for r in idle if sched.has_work()]
    choices += [("finish", r) for r in drv.in_flight] + [("hand", rid) for rid in drv.moving]
    if not choices:
        return
    kind, what = rng.choice(choices)
    if kind == "start":
        drv.start(what)
    elif kind == "finish":
        drv.finish(what)
    else:
        drv.hand(what, rng.random() < deliver_rate)


@pytest.mark.parametrize("seed", range(40))
def test_independent_replicas_and_handoffs_keep_outputs_and_accounting(seed: int) -> None:
    rng = random.Random(seed)
    disaggregated = seed % 2 == 0
    drv = draw(rng, disaggregated)
    sched = drv.scheduler
    largest = max(sched.blocks.capacity_tokens(r) for r in sched.blocks.replicas)
    deliver_rate = rng.choice([1.0, 0.8, 0.3])
    accepted, aborted = {}, set()
    families = [make_request(f"fam-{seed}-{i}", prompt=rng.randint(1, 40)).prompt_ids for i in range(2)]
    arrivals = sorted(rng.randint(0, 60) for _ in range(rng.randint(1, 20)))
    tick = 0
    while arrivals or sched.has_work() or not drv.quiet():
        assert tick < 20_000, f"seed {seed}: no progress"
        while arrivals and arrivals[0] <= tick:
            arrivals.pop(0)
            req = make_request(f"c{seed}-{len(accepted) + len(aborted)}-{tick}", prompt=rng.randint(1, 50))
            if rng.random() < 0.5:
                family = families[rng.randrange(len(families))]
                req.prompt_ids = family[: rng.randint(0, len(family))] + req.prompt_ids[: rng.randint(1, 12)]
            req.max_tokens = rng.randint(1, 25)
            try:
                sched.add(req)
            except (InvalidRequest, ResourceExhausted):
                continue
            accepted[req.request_id] = req
        live = [rid for rid, req in accepted.items() if not req.is_done]
        if live and rng.random() < 0.03:
            victim = rng.choice(live)
            drv.abort(victim)
            aborted.add(victim)
        act(rng, drv, deliver_rate)
        if drv.quiet() and rng.random() < 0.2:
            drv.flush()
            check_mirror(sched, drv.workers)
        tick += 1

    drv.flush()
    check_mirror(sched, drv.workers)
    assert all(used == 0 for used, _ in sched.kv_usage().values())
    assert all(not seqs for seqs in drv.workers.kv.values()), "a sequence was never released on its worker"
    for rid, req in accepted.items():
        if req.replica is None:
            assert rid in aborted and rid not in drv.outputs
            continue
        limit = min(sched.config.max_context, largest)
        expected = reference_output(req, limit)
        got = drv.outputs.get(rid, [])
        if rid in aborted:
            assert got == expected[: len(got)]
        else:
            assert req.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
            assert got == expected[: len(got)] and (len(got) == len(expected) or req.detail), (
                f"seed {seed}: {rid} diverged")
    if disaggregated and drv.delivered + drv.failed:
        assert sched.handoff_fallbacks <= drv.failed  # a request aborted meanwhile needs no fallback


def prefill_and_decode(blocks: int = 32) -> tuple[Scheduler, ConcurrentDriver]:
    sched = Scheduler(SchedulerConfig(max_batch_tokens=64, prefill_chunk_tokens=16, max_context=256),
                      {"p": blocks, "d": blocks}, 4, roles={"p": PREFILL, "d": DECODE})
    return sched, ConcurrentDriver(sched, FakeWorkers({"p": blocks, "d": blocks}, 4))


def run_to_the_end(drv: ConcurrentDriver, replica: str) -> None:
    while drv.scheduler.has_work():
        drv.start(replica)
        drv.finish(replica)
    drv.flush()
    check_mirror(drv.scheduler, drv.workers)


def test_a_prefilled_request_moves_to_the_decode_replica_and_decodes_there() -> None:
    sched, drv = prefill_and_decode()
    req = make_request("a", prompt=10, max_tokens=5)
    sched.add(req)
    drv.start("d")  # the decode replica takes no new request while a prefill replica lives
    assert "d" not in drv.in_flight and req.replica is None
    drv.start("p")
    drv.finish("p")
    assert req.replica == "p" and req.handoff == "waiting" and drv.outputs["a"]
    drv.start("p")  # the prefill replica does not decode it: it plans the handoff, before its own next step
    assert "p" not in drv.in_flight
    assert req.handoff == "moving" and list(drv.moving) == ["a"]
    assert sched.kv_usage()["d"][0] == 3  # 10 tokens of KV reserved in blocks of 4
    drv.hand("a", deliver=True)
    assert req.replica == "d" and sched.kv_usage()["p"][0] == 0
    run_to_the_end(drv, "d")
    assert drv.outputs["a"] == reference_output(req, 256)


def test_a_failed_handoff_prefills_on_the_decode_replica() -> None:
    sched, drv = prefill_and_decode()
    req = make_request("a", prompt=10, max_tokens=5)
    sched.add(req)
    drv.start("p")
    drv.finish("p")
    drv.start("p")
    drv.hand("a", deliver=False)
    assert sched.handoff_fallbacks == 1 and req.replica == "d" and req.num_computed == 0
    run_to_the_end(drv, "d")
    assert drv.outputs["a"] == reference_output(req, 256)


def test_with_the_decode_replica_gone_requests_decode_where_they_were_prefilled() -> None:
    sched, drv = prefill_and_decode()
    req = make_request("a", prompt=10, max_tokens=5)
    sched.add(req)
    drv.start("p")
    drv.finish("p")
    sched.fail_replica("d", "killed")
    while sched.has_work():
        drv.start("p")
        drv.finish("p")
    assert req.replica == "p" and drv.outputs["a"] == reference_output(req, 256)


def test_a_busy_replica_is_not_planned_twice() -> None:
    sched = make_scheduler({"r0": 16, "r1": 16})
    sched.add(make_request("a"))
    plan = sched.schedule(idle={"r0"})
    assert list(plan.batches) == ["r0"]
    with pytest.raises(RuntimeError, match="in flight"):
        sched.schedule(idle={"r0"})
    with pytest.raises(RuntimeError, match="in flight"):
        sched.schedule()


def test_a_prefix_cached_on_the_decode_replica_is_not_sent_again() -> None:
    sched = Scheduler(SchedulerConfig(max_batch_tokens=64, prefill_chunk_tokens=32, max_context=256),
                      {"p": 32, "d": 32}, 4, roles={"p": PREFILL, "d": DECODE})
    drv = ConcurrentDriver(sched, FakeWorkers({"p": 32, "d": 32}, 4))
    shared = make_request("shared", prompt=16).prompt_ids
    first, second = make_request("a", prompt=shared + [5, 6], max_tokens=3), make_request("b", shared + [7, 8, 9], 3)
    moves = []
    for req in (first, second):
        sched.add(req)
        drv.start("p")
        drv.finish("p")
        drv.start("p")
        moves.append(drv.moving[req.request_id][0])
        drv.hand(req.request_id, deliver=True)
        while not req.is_done:
            drv.start("d")
            drv.finish("d")
        drv.flush()
        check_mirror(sched, drv.workers)
    assert moves[0].cached_prefix == () and len(moves[0].new_block_hashes) == 4  # the import names its blocks
    assert moves[1].cached_prefix == moves[0].new_block_hashes  # ... so the next one sends only its own tail
    assert (moves[1].skip_tokens, moves[1].sent_tokens) == (16, 3)
    for req in (first, second):
        assert drv.outputs[req.request_id] == reference_output(req, 256)


def test_a_busy_decode_replica_takes_a_handoff_only_into_never_used_blocks() -> None:
    sched = Scheduler(SchedulerConfig(max_batch_tokens=64, prefill_chunk_tokens=32, max_context=256),
                      {"p": 32, "d": 6}, 4, roles={"p": PREFILL, "d": DECODE})
    drv = ConcurrentDriver(sched, FakeWorkers({"p": 32, "d": 6}, 4))
    owner = make_request("owner", prompt=make_request("x", prompt=16).prompt_ids + [1], max_tokens=2)
    sched.add(owner)  # it leaves 4 cached, evictable blocks on d: 2 never-used ones remain
    drv.start("p")
    drv.finish("p")  # its first token
    drv.start("p")  # its handoff
    drv.hand("owner", deliver=True)
    drv.start("d")
    drv.finish("d")  # its second and last token
    assert owner.is_done
    drv.flush()
    assert sched.blocks.stats("d")["evictable"] == 4
    busy = make_request("busy", prompt=3, max_tokens=20)
    sched.add(busy)
    drv.start("p")
    drv.finish("p")
    drv.start("p")
    drv.hand("busy", deliver=True)
    drv.start("d")  # d decodes "busy": its step is in flight
    late = make_request("late", prompt=10, max_tokens=2)  # 3 blocks of KV: more than the 2 never used
    sched.add(late)
    drv.start("p")
    drv.finish("p")
    drv.start("p")
    assert "late" not in drv.moving and late.handoff == "waiting"  # no eviction while d's step is in flight
    drv.finish("d")
    drv.start("d")  # idle now: it may evict, and the handoff goes
    assert "late" in drv.moving


def test_with_replicas_stepping_apart_each_prefix_family_still_lands_where_its_prefix_is() -> None:
    sched = make_scheduler({"r0": 200, "r1": 200}, block_size=4, max_running_requests=16, max_batch_tokens=128,
                           prefill_chunk_tokens=64)
    drv = ConcurrentDriver(sched, FakeWorkers({"r0": 200, "r1": 200}, 4))
    rng = random.Random(11)
    prefixes = {"A": make_request("A", prompt=48).prompt_ids, "B": make_request("B", prompt=48).prompt_ids}
    order = list("AB" * 20)
    rng.shuffle(order)
    reqs = []
    for i, fam in enumerate(order):
        req = make_request(f"{fam}{i}", prompt=prefixes[fam] + make_request(f"{fam}{i}", prompt=4).prompt_ids,
                           max_tokens=6)
        reqs.append((fam, req))
        sched.add(req)
        for _ in range(3):  # one arrival among a few independent replica turns and returns
            act(rng, drv, 1.0)
    while sched.has_work() or not drv.quiet():
        act(rng, drv, 1.0)
    placed = {fam: [req.replica for f, req in reqs if f == fam] for fam in prefixes}
    home = {fam: Counter(where[2:]).most_common(1)[0][0] for fam, where in placed.items()}
    assert home["A"] != home["B"]
    for fam, where in placed.items():
        assert sum(r == home[fam] for r in where[2:]) >= 0.9 * len(where[2:]), (fam, where)
    load = Counter(req.replica for _, req in reqs)
    assert max(load.values()) <= 0.6 * len(reqs), load
    for _, req in reqs:
        assert drv.outputs[req.request_id] == reference_output(req, 512)
