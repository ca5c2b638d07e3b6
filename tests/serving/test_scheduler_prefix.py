"""Prefix caching in the scheduler, against fake workers that keep their KV in the workers' own BlockTables:
hits, partial hits, a burst that computes a shared prompt once, eviction under pressure, preemption and
abort of requests that share blocks, and cache-aware routing. The Driver checks after every step that the
scheduler's cached, shared and evictable blocks equal the workers'; outputs must equal each request run alone."""

from __future__ import annotations

import random
from collections import Counter

from builders import Driver, make_request, reference_output

from genie.serving.request import Request
from genie.workers.contract import SamplingParams


def family(name: str, shared: list[int], tail: int, max_tokens: int = 4) -> Request:
    """A request whose prompt is `shared` followed by `tail` ids of its own."""
    own = make_request(name, prompt=tail).prompt_ids
    return Request(name, shared + own, max_tokens=max_tokens)


def first_seq(drv: Driver, request_id: str):
    return next(seq for plan in drv.plans for _, seq in plan.seqs() if seq.request_id == request_id)


def check_outputs(drv: Driver, *reqs: Request) -> None:
    for req in reqs:
        assert drv.outputs[req.request_id] == reference_output(req, 512), req.request_id


def test_a_repeated_prompt_starts_from_its_cached_blocks_and_a_partial_match_from_the_shared_ones() -> None:
    drv = Driver.build({"r0": 64}, block_size=4)
    shared = make_request("shared", prompt=20).prompt_ids
    first = family("first", shared, 3)
    drv.scheduler.add(first)
    drv.run()
    again = Request("again", list(first.prompt_ids), max_tokens=4)  # 23 tokens: 5 full blocks are cached
    partial = family("partial", shared[:10], 5)  # shares 2 full blocks, then differs
    drv.scheduler.add(again)
    drv.scheduler.add(partial)
    drv.run()
    assert (first_seq(drv, "again").position, len(first_seq(drv, "again").cached_prefix)) == (20, 5)
    assert first_seq(drv, "partial").position == 8
    check_outputs(drv, first, again, partial)
    blocks = drv.scheduler.blocks
    assert (blocks.queried_tokens, blocks.hit_tokens) == (23 + 23 + 15, 20 + 8)
    assert drv.scheduler.kv_usage()["r0"][0] == 0  # every block is free or evictable again


def test_a_whole_prompt_in_cache_still_computes_its_last_token() -> None:
    drv = Driver.build({"r0": 64}, block_size=4)
    first = make_request("first", prompt=16, max_tokens=3)
    drv.scheduler.add(first)
    drv.run()
    again = Request("again", list(first.prompt_ids), max_tokens=3)
    drv.scheduler.add(again)
    drv.run()
    seq = first_seq(drv, "again")
    assert (seq.position, seq.num_tokens, seq.sample) == (12, 4, True)
    check_outputs(drv, first, again)


def test_a_burst_sharing_a_prompt_computes_it_once() -> None:
    drv = Driver.build({"r0": 64}, block_size=4, max_batch_tokens=64, prefill_chunk_tokens=16)
    shared = make_request("shared", prompt=40).prompt_ids
    burst = [family(f"b{i}", shared, 3) for i in range(6)]
    for req in burst:
        drv.scheduler.add(req)
    drv.run()
    computed = sum(seq.num_tokens for plan in drv.plans for _, seq in plan.seqs() if seq.position < 43)
    prompt_chunks = sum(min(seq.num_tokens, 43 - seq.position) for plan in drv.plans for _, seq in plan.seqs()
                        if seq.position < 43)
    assert prompt_chunks == 43 + 5 * 3, computed  # the 40 shared tokens once, then each tail
    assert all(first_seq(drv, f"b{i}").position == 40 for i in range(1, 6))
    check_outputs(drv, *burst)


def test_cached_blocks_nobody_holds_are_evicted_least_recently_freed_first_when_room_is_needed() -> None:
    drv = Driver.build({"r0": 8}, block_size=4)  # 32 tokens of KV
    old, recent = make_request("old", prompt=12, max_tokens=1), make_request("recent", prompt=12, max_tokens=1)
    for req in (old, recent):
        drv.scheduler.add(req)
        drv.run()
    assert drv.scheduler.blocks.stats("r0") == {"cached": 6, "shared": 0, "evictable": 6}
    big = make_request("big", prompt=20, max_tokens=1)  # 5 blocks: 2 never-used ones, then 3 evicted
    drv.scheduler.add(big)
    drv.run()
    again_recent = Request("again-recent", list(recent.prompt_ids), max_tokens=1)
    again_old = Request("again-old", list(old.prompt_ids), max_tokens=1)
    drv.scheduler.add(again_recent)
    drv.run()
    drv.scheduler.add(again_old)
    drv.run()
    assert first_seq(drv, "again-recent").position == 8  # recent's blocks stayed cached
    assert first_seq(drv, "again-old").position == 0  # old's were evicted first
    check_outputs(drv, old, recent, big, again_recent, again_old)


def test_preempting_or_aborting_a_request_that_shares_blocks_leaves_them_to_the_other() -> None:
    drv = Driver.build({"r0": 10}, block_size=4, prefill_chunk_tokens=16)
    shared = make_request("shared", prompt=16).prompt_ids
    a = family("a", shared, 2, max_tokens=12)
    drv.scheduler.add(a)
    drv.step()
    drv.step()
    b = family("b", shared, 2, max_tokens=12)
    drv.scheduler.add(b)
    drv.run()  # a and b share 4 blocks; b, admitted last, is preempted when they outgrow the 10 blocks
    assert b.num_preemptions > 0 and a.num_preemptions == 0
    check_outputs(drv, a, b)
    c, d = family("c", shared, 2, max_tokens=12), family("d", shared, 2, max_tokens=12)
    drv.scheduler.add(c)
    drv.scheduler.add(d)
    drv.step()
    drv.step()
    drv.abort("c")
    drv.run()
    assert first_seq(drv, "d").position == 16
    check_outputs(drv, d)
    assert drv.scheduler.kv_usage()["r0"][0] == 0


def test_a_request_that_ends_while_its_step_is_in_flight_has_its_new_blocks_evicted_on_the_worker() -> None:
    drv = Driver.build({"r0": 16}, block_size=4)
    req = make_request("gone", prompt=9)
    drv.scheduler.add(req)
    plan = drv.scheduler.schedule()
    (seq,) = plan.batches["r0"]
    assert len([name for name in seq.new_block_hashes if name]) == 2
    sampled = drv.workers.step(plan)  # the worker ran the step and cached the two blocks it filled
    assert drv.workers.tables["r0"].num_cached == 2
    assert drv.scheduler.abort("gone") == "r0"  # ...but the router ended the request before it came back
    drv.scheduler.update(plan, sampled)
    evictions = drv.scheduler.take_evictions()
    drv.workers.release("r0", "gone")
    drv.workers.evict(evictions)
    assert evictions == {"r0": list(seq.new_block_hashes)}
    drv.check_mirror()
    assert drv.workers.tables["r0"].num_cached == 0


def test_penalties_that_count_tokens_never_start_from_cached_blocks() -> None:
    drv = Driver.build({"r0": 64}, block_size=4)
    first = make_request("first", prompt=12, max_tokens=2)
    drv.scheduler.add(first)
    drv.run()
    counted = Request("counted", list(first.prompt_ids), max_tokens=2,
                      sampling=SamplingParams(repetition_penalty=1.3))
    drv.scheduler.add(counted)
    drv.run()
    assert first_seq(drv, "counted").position == 0


def test_caching_off_names_no_block_and_reuses_nothing() -> None:
    drv = Driver.build({"r0": 64}, block_size=4, prefix_caching=False)
    first = make_request("first", prompt=12, max_tokens=2)
    drv.scheduler.add(first)
    drv.run()
    drv.scheduler.add(Request("again", list(first.prompt_ids), max_tokens=2))
    drv.run()
    seqs = [seq for plan in drv.plans for _, seq in plan.seqs()]
    assert all(not seq.new_block_hashes and not seq.cached_prefix for seq in seqs)
    assert first_seq(drv, "again").position == 0 and drv.scheduler.blocks.stats("r0")["cached"] == 0


def test_two_prefix_families_each_land_on_the_replica_holding_their_prefix_and_load_stays_balanced() -> None:
    drv = Driver.build({"r0": 200, "r1": 200}, block_size=4, max_running_requests=16, max_batch_tokens=128,
                       prefill_chunk_tokens=64)
    prefixes = {"A": make_request("A", prompt=48).prompt_ids, "B": make_request("B", prompt=48).prompt_ids}
    placed: dict[str, list[str]] = {"A": [], "B": []}
    reqs = []
    order = list("AB" * 20)
    random.Random(7).shuffle(order)  # 20 of each, interleaved in no pattern that free-block balancing follows
    for i, fam in enumerate(order):
        req = family(f"{fam}{i}", prefixes[fam], 4, max_tokens=6)
        reqs.append((fam, req))
        drv.scheduler.add(req)
        drv.step()  # one arrival per step: requests overlap, as in a live server
    drv.run()
    for fam, req in reqs:
        placed[fam].append(req.replica)
    home = {fam: Counter(where[2:]).most_common(1)[0][0] for fam, where in placed.items()}  # after warm-up
    assert home["A"] != home["B"]
    for fam, where in placed.items():
        assert sum(r == home[fam] for r in where[2:]) >= 0.9 * len(where[2:]), (fam, where)
    load = Counter(req.replica for _, req in reqs)
    assert max(load.values()) <= 0.6 * len(reqs), load
    check_outputs(drv, *(req for _, req in reqs))


def test_a_prefix_everyone_wants_does_not_pile_every_request_onto_one_replica() -> None:
    drv = Driver.build({"r0": 400, "r1": 400}, block_size=4, max_running_requests=32, max_batch_tokens=256,
                       prefill_chunk_tokens=64)
    shared = make_request("S", prompt=48).prompt_ids
    reqs = [family(f"s{i}", shared, 4, max_tokens=30) for i in range(32)]
    for req in reqs:
        drv.scheduler.add(req)
    drv.run()
    load = Counter(req.replica for req in reqs)
    assert min(load.values()) >= 0.4 * len(reqs) * 0.75, load  # the cache pulls, the load guard pushes back
    check_outputs(drv, *reqs)


def test_the_choices_of_an_n_3_request_share_the_prompt_s_blocks() -> None:
    from genie.serving.choices import member_ids

    drv = Driver.build({"r0": 64}, block_size=4, prefill_chunk_tokens=16)
    prompt = make_request("p", prompt=30).prompt_ids
    members = [Request(rid, list(prompt), max_tokens=3) for rid in member_ids("req-n", 3)]
    for req in members:
        drv.scheduler.add(req)
    drv.run()
    assert [first_seq(drv, req.request_id).position for req in members] == [0, 28, 28]
    assert drv.workers.prefix_hits == 2 * 28
