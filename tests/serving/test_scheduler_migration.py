"""Request migration in the pure scheduler: a failed replica's requests move to a live one and go on."""

from __future__ import annotations

from builders import Driver, make_request, reference_output

from genie.serving.request import FinishReason, Phase


def _start(drv: Driver, n: int, steps: int, max_tokens: int = 12):
    reqs = [make_request(f"q{i}", prompt=6 + i, max_tokens=max_tokens) for i in range(n)]
    for req in reqs:
        drv.scheduler.add(req)
    for _ in range(steps):
        drv.step()
    return reqs


def test_requests_of_a_failed_replica_move_and_finish_with_the_same_tokens():
    drv = Driver.build({"r0": 64, "r1": 64}, block_size=4, migration_limit=3)
    reqs = _start(drv, 6, steps=5)
    on_r1 = [r for r in reqs if r.replica == "r1"]
    assert on_r1 and all(r.num_output > 0 for r in on_r1)
    outcome = drv.scheduler.fail_replica("r1", "connection reset by peer")
    drv.workers.lose("r1")
    assert outcome.failed == [] and outcome.migrated == on_r1
    assert all(r.phase is Phase.QUEUED and r.replica is None and r.num_computed == 0 for r in on_r1)
    drv.run()
    for req in reqs:
        assert req.replica == "r0" and req.finish_reason is FinishReason.LENGTH
        assert drv.outputs[req.request_id] == reference_output(req, 512), req.request_id
    assert drv.scheduler.kv_usage() == {"r0": (0, 64)}
    assert [r.num_migrations for r in on_r1] == [1] * len(on_r1)


def test_a_step_in_flight_when_the_replica_fails_drops_only_its_tokens():
    drv = Driver.build({"r0": 64, "r1": 64}, block_size=4, migration_limit=3)
    reqs = _start(drv, 4, steps=2)
    plan = drv.scheduler.schedule()
    sampled = drv.workers.step(plan)
    on_r1 = {r.request_id for r in reqs if r.replica == "r1"}
    drv.scheduler.fail_replica("r1", "killed")
    drv.workers.lose("r1")
    survivors = {rid: tok for rid, tok in sampled.items() if rid not in on_r1}  # r1 never answered
    events = drv.scheduler.update(plan, survivors)
    assert {e.request_id for e in events} == set(survivors)
    for event in events:
        drv.outputs[event.request_id].append(event.token_id)
    drv.run()
    for req in reqs:
        assert drv.outputs[req.request_id] == reference_output(req, 512)


def test_preempted_requests_pinned_to_the_failed_replica_move_too():
    drv = Driver.build({"r0": 4}, block_size=4, prefill_chunk_tokens=16, migration_limit=1)
    a, b = make_request("a", prompt=7, max_tokens=8), make_request("b", prompt=7, max_tokens=8)
    drv.scheduler.add(a)
    drv.scheduler.add(b)
    for _ in range(3):
        drv.step()
    assert b.phase is Phase.QUEUED and b.replica == "r0", "the test needs a request preempted on r0"
    drv.scheduler.add_replica("r1", 64)
    drv.workers.replicas["r1"] = 64
    drv.workers.lose("r1")
    outcome = drv.scheduler.fail_replica("r0", "killed")
    drv.workers.lose("r0")
    assert set(outcome.migrated) == {a, b}
    drv.run()
    for req in (a, b):
        assert req.replica == "r1" and drv.outputs[req.request_id] == reference_output(req, 512)


def test_migration_limit_and_no_replica_left_end_requests_with_a_reason():
    drv = Driver.build({"r0": 64, "r1": 64, "r2": 64}, block_size=4, migration_limit=1)
    reqs = _start(drv, 6, steps=2)
    first = drv.scheduler.fail_replica("r0", "killed")
    drv.workers.lose("r0")
    drv.step()
    moved = {r.request_id for r in first.migrated}
    again = [r for r in reqs if r.request_id in moved and r.replica is not None]
    assert again
    second = drv.scheduler.fail_replica(again[0].replica, "killed again")
    failed_ids = {r.request_id for r in second.failed}
    assert again[0].request_id in failed_ids
    assert "already moved 1 times (serving.migration_limit)" in again[0].detail
    survivor = drv.scheduler.blocks.replicas
    assert len(survivor) == 1
    last = drv.scheduler.fail_replica(survivor[0], "killed last")
    assert last.migrated == []
    for req in last.failed:
        expected = "already moved 1 times" if req.num_migrations else "no other replica is left"
        assert expected in req.detail, req.detail
    events = drv.step()  # requests never placed anywhere end at the next schedule
    assert events and all(e.finish_reason is FinishReason.ERROR for e in events)
    assert not drv.scheduler.has_work()


def test_migration_off_ends_requests_as_before():
    drv = Driver.build({"r0": 64, "r1": 64}, block_size=4)
    reqs = _start(drv, 4, steps=2)
    outcome = drv.scheduler.fail_replica("r1", "killed")
    assert outcome.migrated == [] and outcome.failed == [r for r in reqs if r.replica == "r1"]
    assert all(r.detail == "worker replica 'r1' failed: killed" for r in outcome.failed)


def test_a_restarted_replica_takes_new_requests():
    drv = Driver.build({"r0": 64, "r1": 64}, block_size=4, migration_limit=3)
    _start(drv, 2, steps=1)
    drv.scheduler.fail_replica("r1", "killed")
    drv.workers.lose("r1")
    drv.scheduler.add_replica("r1", 64)
    late = [make_request(f"late{i}", prompt=5, max_tokens=3) for i in range(4)]
    for req in late:
        drv.scheduler.add(req)
    drv.run()
    assert {r.replica for r in late} == {"r0", "r1"}
