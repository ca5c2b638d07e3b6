"""The scheduler as a state machine: schedule(), hand-made or fake-worker results, update(), check queues."""

from __future__ import annotations

import pytest
from builders import Driver, make_request, make_scheduler, reference_output

from genie.errors import AlreadyExists, InvalidRequest, NotFound, ResourceExhausted
from genie.serving.request import FinishReason, Phase


def test_prompt_is_prefilled_in_chunks_then_decoded_one_token_a_step():
    sched = make_scheduler({"r0": 64}, block_size=4, prefill_chunk_tokens=16)
    req = make_request("a", prompt=40, max_tokens=3)
    sched.add(req)
    assert req.phase is Phase.QUEUED and sched.num_waiting() == 1
    chunks = []
    for _ in range(3):
        plan = sched.schedule()
        [seq] = plan.batches["r0"]
        chunks.append((seq.position, seq.num_tokens, seq.sample))
        events = sched.update(plan, {"a": 5} if seq.sample else {})
    assert chunks == [(0, 16, False), (16, 16, False), (32, 8, True)]
    assert [(e.token_id, e.finished) for e in events] == [(5, False)]
    assert req.phase is Phase.DECODE and req.num_computed == 40 and req.replica == "r0"
    plan = sched.schedule()
    [seq] = plan.batches["r0"]
    assert (seq.position, seq.token_ids, seq.sample) == (40, [5], True)
    sched.update(plan, {"a": 6})
    plan = sched.schedule()
    [event] = sched.update(plan, {"a": 7})
    assert (event.token_id, event.finished, event.finish_reason, event.release_from) == (
        7,
        True,
        FinishReason.LENGTH,
        "r0",
    )
    assert req.output_ids == [5, 6, 7] and req.phase is Phase.FINISHED
    assert sched.kv_usage() == {"r0": (0, 64)} and not sched.has_work()


def test_token_budget_and_running_limit_hold_every_step():
    drv = Driver.build(
        {"r0": 200}, block_size=4, max_batch_tokens=20, max_running_requests=3, prefill_chunk_tokens=8
    )
    requests = [make_request(f"q{i}", prompt=8 + 7 * i % 30, max_tokens=4 + i % 5) for i in range(10)]
    for req in requests:
        drv.scheduler.add(req)
    while drv.scheduler.has_work():
        drv.step()
        plan = drv.plans[-1]
        assert plan.num_tokens <= 20 and plan.num_seqs <= 3
        assert drv.scheduler.num_running() <= 3
    # both limits actually bound some step, so the checks above had something to catch
    assert max(p.num_tokens for p in drv.plans) == 20
    assert max(p.num_seqs for p in drv.plans) == 3
    for req in requests:
        assert drv.outputs[req.request_id] == reference_output(req, 512)
    assert drv.scheduler.kv_usage() == {"r0": (0, 200)}


def test_long_prompt_is_chunked_while_running_decodes_advance_every_step():
    drv = Driver.build({"r0": 256}, block_size=4, max_batch_tokens=10, prefill_chunk_tokens=8)
    for rid in ("a", "b"):
        drv.scheduler.add(make_request(rid, prompt=4, max_tokens=40))
    drv.step()
    assert drv.scheduler.counts_by_phase()["decode"] == 2
    long = make_request("long", prompt=60, max_tokens=2)
    drv.scheduler.add(long)
    chunk_sizes = []
    while long.phase is not Phase.DECODE:
        before = {rid: len(drv.outputs[rid]) for rid in ("a", "b")}
        drv.step()
        seqs = drv.plans[-1].batches["r0"]
        assert [s.request_id for s in seqs[:2]] == ["a", "b"]  # decodes go first
        assert all(len(drv.outputs[rid]) == before[rid] + 1 for rid in ("a", "b"))
        chunk_sizes.append(seqs[2].num_tokens)
    # 2 decode tokens leave 8 of the 10-token budget: full 8-token chunks, then the 4-token rest
    assert chunk_sizes == [8] * 7 + [4]
    drv.run()
    assert drv.outputs["long"] == reference_output(long, 512)


def test_prefill_chunk_never_exceeds_the_budget_left_after_decodes():
    drv = Driver.build({"r0": 256}, block_size=4, max_batch_tokens=10, prefill_chunk_tokens=10)
    for rid in ("a", "b", "c", "d"):
        drv.scheduler.add(make_request(rid, prompt=2, max_tokens=20))
    drv.step()
    drv.scheduler.add(make_request("long", prompt=30, max_tokens=1))
    drv.step()
    assert [s.num_tokens for s in drv.plans[-1].batches["r0"]] == [1, 1, 1, 1, 6]


def test_preemption_and_resume_give_the_same_output_as_an_unpreempted_run():
    def run(num_blocks: int) -> tuple[Driver, list]:
        drv = Driver.build({"r0": num_blocks}, block_size=4, prefill_chunk_tokens=8, max_batch_tokens=32)
        reqs = [make_request(f"p{i}", prompt=5 + 3 * i, max_tokens=25) for i in range(6)]
        for req in reqs:
            drv.scheduler.add(req)
        drv.run()
        return drv, reqs

    roomy, roomy_reqs = run(1000)
    tight, tight_reqs = run(16)
    assert sum(r.num_preemptions for r in roomy_reqs) == 0
    assert sum(r.num_preemptions for r in tight_reqs) > 0
    assert any(plan.preempted for plan in tight.plans)
    assert tight.outputs == roomy.outputs
    assert all(tight.outputs[r.request_id] == reference_output(r, 512) for r in tight_reqs)
    assert tight.scheduler.kv_usage() == {"r0": (0, 16)}


@pytest.mark.parametrize("caching", [False, True])
def test_preempted_request_returns_to_the_front_keeps_its_output_and_is_reprefilled(caching):
    # 4 blocks of 4 tokens: two 7-token prompts fill them; the third decode needs a new block
    drv = Driver.build({"r0": 4}, block_size=4, prefill_chunk_tokens=16, prefix_caching=caching)
    a, b = make_request("a", prompt=7, max_tokens=6), make_request("b", prompt=7, max_tokens=6)
    drv.scheduler.add(a)
    drv.scheduler.add(b)
    drv.step()
    drv.step()
    late = make_request("late", prompt=2, max_tokens=2)
    drv.scheduler.add(late)
    drv.step()
    plan = drv.plans[-1]
    assert plan.preempted == [("b", "r0")]  # b was admitted after a
    assert b.phase is Phase.QUEUED and b.num_computed == 0 and b.replica == "r0"
    assert b.output_ids == drv.outputs["b"] and len(b.output_ids) == 2
    assert list(plan.batches["r0"][0].token_ids) == [a.output_ids[-2]]
    kept = list(b.all_ids)
    while b.phase is Phase.QUEUED:
        drv.step()
    resumed = next(s for s in drv.plans[-1].batches["r0"] if s.request_id == "b")
    # with caching, b starts again from its own first block, which stayed cached while it waited
    start = 4 if caching else 0
    assert (resumed.position, resumed.token_ids) == (start, kept[start : start + resumed.num_tokens])
    assert len(resumed.cached_prefix) == start // 4
    assert late.admitted == -1 or late.admitted > b.admitted  # b went back ahead of the later request
    drv.run()
    for req in (a, b, late):
        assert drv.outputs[req.request_id] == reference_output(req, 512)


def test_a_request_preempted_in_a_step_is_not_readmitted_in_the_same_step():
    drv = Driver.build({"r0": 4}, block_size=4, prefill_chunk_tokens=4)
    a, b = make_request("a", prompt=8, max_tokens=6), make_request("b", prompt=8, max_tokens=6)
    drv.scheduler.add(a)
    drv.scheduler.add(b)
    drv.step()
    drv.step()  # both prompts are in KV now: 4 of 4 blocks
    drv.step()  # a's decode needs a 3rd block; b gives up 2, one stays free, enough for b's first chunk
    plan = drv.plans[-1]
    assert plan.preempted == [("b", "r0")]
    assert [seq.request_id for _, seq in plan.seqs()] == ["a"]
    assert drv.scheduler.kv_usage() == {"r0": (3, 1)}
    drv.run()
    assert b.num_preemptions >= 1
    assert [drv.outputs[r.request_id] for r in (a, b)] == [reference_output(r, 512) for r in (a, b)]


def test_abort_frees_blocks_and_removes_the_request_from_every_queue():
    sched = make_scheduler({"r0": 16}, block_size=4, max_running_requests=1)
    sched.add(make_request("run", prompt=10))
    sched.add(make_request("wait", prompt=10))
    plan = sched.schedule()
    sched.update(plan, {"run": 3})
    assert sched.kv_usage() == {"r0": (3, 13)} and sched.num_waiting() == 1
    assert sched.abort("run") == "r0"
    assert sched.kv_usage() == {"r0": (0, 16)} and sched.num_running() == 0
    with pytest.raises(NotFound):
        sched.get("run")
    assert sched.abort("wait") is None  # it held no KV anywhere
    assert sched.abort("wait") is None and sched.abort("never-seen") is None
    assert not sched.has_work() and sched.num_waiting() == 0
    assert sched.counts_by_phase() == {"queued": 0, "prefill": 0, "decode": 0, "finished": 0, "aborted": 2}
    assert sched.schedule().num_seqs == 0


def test_abort_while_a_step_is_in_flight_drops_its_result():
    sched = make_scheduler()
    req = make_request("a", prompt=4)
    sched.add(req)
    sched.add(make_request("b", prompt=4))
    plan = sched.schedule()
    assert sched.abort("a") == "r0"
    events = sched.update(plan, {"a": 9, "b": 8})
    assert [(e.request_id, e.token_id) for e in events] == [("b", 8)]
    assert req.output_ids == [] and req.phase is Phase.ABORTED and req.finish_reason is FinishReason.ABORT


def test_full_queue_raises_resource_exhausted_and_changes_nothing():
    sched = make_scheduler(max_queue=2)
    sched.add(make_request("a"))
    sched.add(make_request("b"))
    with pytest.raises(ResourceExhausted, match="2 requests are already waiting.*retry later") as err:
        sched.add(make_request("c"))
    assert err.value.http_status == 429
    assert sched.num_waiting() == 2
    with pytest.raises(NotFound):
        sched.get("c")
    sched.update(sched.schedule(), {"a": 1, "b": 2})
    sched.add(make_request("c"))  # admitted requests no longer count against the queue
    assert sched.num_waiting() == 1


def test_add_rejects_bad_requests_with_a_reason():
    sched = make_scheduler({"r0": 8}, block_size=4, max_context=100)
    sched.add(make_request("a"))
    with pytest.raises(AlreadyExists, match="'a' is already in use"):
        sched.add(make_request("a"))
    with pytest.raises(InvalidRequest, match="empty prompt"):
        sched.add(make_request("e", prompt=[]))
    with pytest.raises(InvalidRequest, match="max_tokens must be >= 1, got 0"):
        sched.add(make_request("m", max_tokens=0))
    with pytest.raises(InvalidRequest, match="prompt has 33 tokens but the largest KV cache holds 32"):
        sched.add(make_request("big", prompt=33))
    with pytest.raises(InvalidRequest, match="context is 100 tokens"):
        make_scheduler(max_context=100).add(make_request("ctx", prompt=100))
    assert sched.num_waiting() == 1


def test_new_requests_go_to_the_replica_with_most_free_blocks_and_stay_pinned():
    drv = Driver.build({"r0": 12, "r1": 10}, block_size=4, prefill_chunk_tokens=16)
    reqs = [make_request(f"q{i}", prompt=8, max_tokens=12) for i in range(4)]
    for req in reqs:
        drv.scheduler.add(req)
    drv.step()
    # q0: r0 freer (12 > 10); q1: tie on free (10/10), r1 runs fewer; q2: r0 freer; q3: tie, r1 runs fewer
    assert [r.replica for r in reqs] == ["r0", "r1", "r0", "r1"]
    drv.run()
    for req in reqs:
        homes = {replica for plan in drv.plans for replica, s in plan.seqs() if s.request_id == req.request_id}
        assert homes == {req.replica}
        assert drv.outputs[req.request_id] == reference_output(req, 512)


def test_preempted_request_resumes_on_its_own_replica_even_when_another_is_emptier():
    drv = Driver.build({"r0": 4}, block_size=4, prefill_chunk_tokens=16)
    a, b = make_request("a", prompt=7, max_tokens=8), make_request("b", prompt=7, max_tokens=8)
    drv.scheduler.add(a)
    drv.scheduler.add(b)
    for _ in range(3):
        drv.step()
    assert b.phase is Phase.QUEUED and b.replica == "r0"
    drv.scheduler.add_replica("r1", 64)
    drv.workers.replicas["r1"] = 64
    drv.workers.lose("r1")
    c = make_request("c", prompt=7, max_tokens=8)
    drv.scheduler.add(c)
    drv.run()
    assert c.replica == "r1"
    assert {rep for plan in drv.plans for rep, s in plan.seqs() if s.request_id == "b"} == {"r0"}
    assert drv.outputs["b"] == reference_output(b, 512)


def test_fail_replica_ends_its_requests_with_error_and_the_rest_carry_on():
    drv = Driver.build({"r0": 32, "r1": 32}, block_size=4)
    reqs = [make_request(f"q{i}", prompt=6, max_tokens=10) for i in range(4)]
    for req in reqs:
        drv.scheduler.add(req)
    drv.step()
    plan = drv.scheduler.schedule()  # a step in flight when r1 dies; its results still come back
    sampled = drv.workers.step(plan)
    failed = drv.scheduler.fail_replica("r1", "connection reset by peer").failed
    assert sorted(r.request_id for r in failed) == ["q1", "q3"]
    assert all(r.finish_reason is FinishReason.ERROR and r.phase is Phase.FINISHED for r in failed)
    assert "replica 'r1' failed: connection reset by peer" in failed[0].detail
    drv.workers.lose("r1")
    events = drv.scheduler.update(plan, sampled)
    assert sorted(e.request_id for e in events) == ["q0", "q2"]
    for event in events:
        drv.outputs[event.request_id].append(event.token_id)
    again = drv.scheduler.fail_replica("r1", "again")
    assert again.failed == [] and again.migrated == []
    with pytest.raises(NotFound):
        drv.scheduler.fail_replica("r9", "never existed")
    late = make_request("late", prompt=6, max_tokens=4)
    drv.scheduler.add(late)
    drv.run()
    assert late.replica == "r0"
    for req in (reqs[0], reqs[2], late):
        assert drv.outputs[req.request_id] == reference_output(req, 512)
    assert drv.scheduler.kv_usage() == {"r0": (0, 32)}


def test_request_that_no_live_replica_can_hold_is_failed_not_stuck():
    drv = Driver.build({"r0": 4, "r1": 16}, block_size=4)  # 16 and 64 tokens per sequence
    big = make_request("big", prompt=40)
    drv.scheduler.add(big)
    drv.scheduler.fail_replica("r1", "out of memory")
    drv.scheduler.add(make_request("small", prompt=4, max_tokens=3))
    events = drv.step()
    assert big.phase is Phase.FINISHED and big.finish_reason is FinishReason.ERROR
    assert "needs 40 tokens of KV but the largest KV cache of the live replicas holds 16" in big.detail
    assert events[0].request_id == "big" and events[0].release_from is None
    drv.run()
    assert len(drv.outputs["small"]) == 3


def test_waiting_requests_fail_when_no_replica_is_left():
    sched = make_scheduler({"r0": 8})
    req = make_request("a")
    sched.add(req)
    sched.fail_replica("r0", "killed")
    plan = sched.schedule()
    assert plan.num_seqs == 0 and [e.request_id for e in plan.finished] == ["a"]
    assert req.detail == "no worker replica is available to run this request"
    assert not sched.has_work()


def test_decode_that_outgrows_its_replica_stops_with_length():
    drv = Driver.build({"r0": 4}, block_size=4)  # one sequence can hold 16 tokens
    req = make_request("a", prompt=10, max_tokens=100)
    drv.scheduler.add(req)
    drv.run()
    assert req.finish_reason is FinishReason.LENGTH and req.num_tokens == 16
    assert "16 tokens, all that one sequence can hold in replica 'r0'" in req.detail
    assert drv.outputs["a"] == reference_output(req, 16)


def test_finish_reasons_eos_ignore_eos_max_tokens_and_context():
    plain = make_request("x", prompt=5, max_tokens=6)
    out = reference_output(plain, 512)
    eos = frozenset({out[3]})
    assert out[3] not in out[:3]
    stop = make_request("x", prompt=5, max_tokens=6, eos=eos)
    keep = make_request("y", prompt=plain.prompt_ids, max_tokens=6, eos=eos, ignore_eos=True)
    drv = Driver.build({"r0": 64}, block_size=4, max_context=10)
    drv.scheduler.add(stop)
    drv.scheduler.add(keep)
    drv.run()
    assert (drv.outputs["x"], stop.finish_reason) == (out[:4], FinishReason.STOP)
    assert (drv.outputs["y"], keep.finish_reason) == (out[:5], FinishReason.LENGTH)
    assert "context of 10 tokens" in keep.detail
    drv = Driver.build({"r0": 64}, block_size=4)
    whole = make_request("y", prompt=plain.prompt_ids, max_tokens=6, eos=eos, ignore_eos=True)
    drv.scheduler.add(whole)
    drv.run()
    assert drv.outputs["y"] == out and whole.finish_reason is FinishReason.LENGTH and whole.detail is None


def test_finish_from_the_router_frees_blocks_and_names_the_replica():
    sched = make_scheduler()
    req = make_request("a", prompt=4)
    sched.add(req)
    sched.update(sched.schedule(), {"a": 1})
    assert sched.finish("a", FinishReason.STOP) == "r0"
    assert req.finish_reason is FinishReason.STOP and sched.kv_usage()["r0"][0] == 0
    assert sched.finish("a", FinishReason.STOP) is None
    assert sched.counts_by_phase()["finished"] == 1


def test_update_rejects_results_that_do_not_match_the_plan_and_changes_nothing():
    sched = make_scheduler(max_running_requests=1)
    req = make_request("a", prompt=4)
    sched.add(req)
    sched.add(make_request("w", prompt=4))
    plan = sched.schedule()
    with pytest.raises(RuntimeError, match="still in flight"):
        sched.schedule()
    for bad in ({}, {"a": -1}, {"a": 1.5}, {"a": True}, {"a": 1, "w": 2}):
        with pytest.raises(ValueError, match="do not match its plan"):
            sched.update(plan, bad)
        assert req.num_computed == 0 and req.output_ids == []
    sched.update(plan, {"a": 1})
    with pytest.raises(ValueError, match="plan of a step in flight"):
        sched.update(plan, {"a": 1})
    assert req.output_ids == [1]


def test_counts_by_phase_follow_the_lifecycle():
    sched = make_scheduler(max_running_requests=2, prefill_chunk_tokens=4)
    for rid, prompt in (("a", 2), ("b", 8), ("c", 2)):
        sched.add(make_request(rid, prompt=prompt))
    assert sched.counts_by_phase() == {"queued": 3, "prefill": 0, "decode": 0, "finished": 0, "aborted": 0}
    sched.update(sched.schedule(), {"a": 1})
    assert sched.counts_by_phase() == {"queued": 1, "prefill": 1, "decode": 1, "finished": 0, "aborted": 0}
    assert (sched.num_waiting(), sched.num_running()) == (1, 2)


def test_scheduler_config_is_checked_and_built_from_the_serving_section():
    from genie.config import ServingConfig
    from genie.errors import ConfigError
    from genie.serving.scheduler import SchedulerConfig

    with pytest.raises(ConfigError, match="max_batch_tokens must be > 0, got 0"):
        SchedulerConfig(max_batch_tokens=0)
    with pytest.raises(ConfigError, match=r"prefill_chunk_tokens \(600\) must be <= max_batch_tokens \(512\)"):
        SchedulerConfig(max_batch_tokens=512, prefill_chunk_tokens=600)
    config = SchedulerConfig.from_serving(ServingConfig(max_queue=7, prefill_chunk_tokens=128), max_context=2048)
    assert (config.max_queue, config.prefill_chunk_tokens, config.max_context) == (7, 128, 2048)
    assert config.max_batch_tokens == ServingConfig().max_batch_tokens
