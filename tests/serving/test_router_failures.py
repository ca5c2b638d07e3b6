"""The router when replicas fail: migration, a hung step given up, one bad sequence, drain's abort, rejoin."""

from __future__ import annotations

import asyncio

import pytest

from test_router import FakeClient, collect, gen, make_router, running  # noqa: F401  (fixture)

from genie.errors import InvalidRequest, ResourceExhausted, Unavailable
from genie.serving.replica import Replica, Stage

PROMPTS = [[i, i + 1, i + 2] for i in range(1, 9)]


async def _reference(running) -> list[list[int]]:  # noqa: F811
    router = running(make_router({"r0": FakeClient()}))
    return [(await collect(router.submit(gen(p, max_tokens=12))))[1] for p in PROMPTS]


class DiesAfter(FakeClient):
    """A worker that answers `steps` steps, then is unreachable."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.budget = steps

    async def step(self, fragment_id, seqs, timeout=None):
        if self.budget == 0:
            raise Unavailable("worker at 127.0.0.1:1 did not answer Step (UNAVAILABLE: connection refused)")
        self.budget -= 1
        return await super().step(fragment_id, seqs, timeout)


async def test_requests_of_a_dead_replica_migrate_and_keep_their_tokens(running) -> None:  # noqa: F811
    expected = await _reference(running)
    router = running(make_router({"r0": FakeClient(), "r1": DiesAfter(4)}, migration_limit=3))
    results = await asyncio.gather(*(collect(router.submit(gen(p, max_tokens=12))) for p in PROMPTS))
    assert [r[2] for r in results] == ["length"] * len(PROMPTS)
    assert [r[1] for r in results] == expected
    assert router.metrics.migrations._value.get() > 0
    assert router.metrics.migration_failures._value.get() == 0
    assert router.ready and not router.replicas["r1"].alive


async def test_a_hung_step_is_given_up_when_the_replica_is_reported_lost(running) -> None:  # noqa: F811
    expected = await _reference(running)
    hung = FakeClient(gate=asyncio.Event())  # never opens: a SIGSTOPped worker
    router = running(make_router({"r0": FakeClient(), "r1": hung}, migration_limit=3))
    router.step_timeout = 600  # only the report can end the hung step
    subs = [router.submit(gen(p, max_tokens=12)) for p in PROMPTS]
    await asyncio.sleep(0.05)
    router.replica_lost("r1", "worker w-r1 stopped answering")
    results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in subs)), timeout=10)
    assert [r[1] for r in results] == expected


async def test_one_bad_sequence_fails_alone(running) -> None:  # noqa: F811
    class Picky(FakeClient):
        async def step(self, fragment_id, seqs, timeout=None):
            if any(s.token_ids and 99 in s.token_ids for s in seqs):
                raise InvalidRequest("token id 99 is outside the vocabulary")
            return await super().step(fragment_id, seqs, timeout)

    router = running(make_router({"r0": Picky()}))
    subs = [router.submit(gen(p, max_tokens=6)) for p in PROMPTS[:4]] + [router.submit(gen([99, 1], max_tokens=6))]
    results = await asyncio.gather(*(collect(s) for s in subs))
    assert [r[2] for r in results[:4]] == ["length"] * 4
    assert results[4][2] == "error" and "outside the vocabulary" in results[4][3]


async def test_abort_all_ends_running_requests_with_abort(running) -> None:  # noqa: F811
    gate = asyncio.Event()
    client = FakeClient(gate=gate)
    router = running(make_router({"r0": client}))
    subs = [router.submit(gen(p, max_tokens=200)) for p in PROMPTS[:3]]
    await asyncio.sleep(0.05)
    router.abort_all("the grace period is over")
    gate.set()
    results = await asyncio.gather(*(collect(s) for s in subs))
    assert all(r[2] == "abort" and r[3] == "the grace period is over" for r in results)
    assert await router.wait_idle(5)
    assert client.seqs == {}


async def test_a_replica_that_comes_back_takes_requests_again(running) -> None:  # noqa: F811
    down: list[tuple[str, str]] = []
    router = make_router({"r0": FakeClient(), "r1": DiesAfter(0)}, migration_limit=3)
    router._on_replica_down = lambda name, reason: down.append((name, reason))
    running(router)
    await asyncio.gather(*(collect(router.submit(gen(p, max_tokens=3))) for p in PROMPTS[:2]))
    assert [name for name, _ in down] == ["r1"]
    fresh = FakeClient()
    router.replica_back(Replica("r1", [Stage("w-r1", fresh, "frag")], 64, warm=True))
    await asyncio.gather(*(collect(router.submit(gen(p, max_tokens=3))) for p in PROMPTS))
    assert fresh.steps > 0 and router.replicas["r1"].alive
    assert router.metrics.restarts.labels("r1")._value.get() == 1


class GoneAtRelease(FakeClient):
    """A worker that dies between steps, found out by a Release: its steps would never be answered after that
    (a write to a killed worker's stream can wait for good), so the router must not send it one."""

    def __init__(self) -> None:
        super().__init__()
        self.dead = False
        self.steps_after_death = 0

    async def step(self, fragment_id, seqs, timeout=None):
        if self.dead:
            self.steps_after_death += 1
            await asyncio.Event().wait()  # never answered
        return await super().step(fragment_id, seqs, timeout)

    async def release(self, fragment_id, seq_ids, timeout=None, evict=()):
        self.dead = True
        raise Unavailable("worker at 127.0.0.1:1 did not answer Release (UNAVAILABLE: connection refused)")


async def test_a_replica_found_dead_by_a_release_gets_no_step_and_its_restart_takes_requests(running) -> None:  # noqa: F811
    """The clean-clone hang: the Release flushed before a planned step failed, the replica was marked down and
    its requests moved, but the step planned a moment before was still sent to the dead worker. It hung, and
    the restarted replica of that name never got a step again, since the router waited for the old one."""
    expected = await _reference(running)
    gone = GoneAtRelease()
    router = running(make_router({"r0": FakeClient(), "r1": gone}, migration_limit=3))
    router.step_timeout = 600  # only not sending the step can keep it from hanging
    lengths = [2, 12, 12, 12, 3, 12, 12, 12]  # short ones end early, so a Release reaches r1 mid-stream
    results = await asyncio.wait_for(asyncio.gather(*(
        collect(router.submit(gen(p, max_tokens=n))) for p, n in zip(PROMPTS, lengths, strict=True))), timeout=10)
    assert [r[2] for r in results] == ["length"] * len(PROMPTS)
    assert [r[1] for r in results] == [e[:n] for e, n in zip(expected, lengths, strict=True)]
    assert not router.replicas["r1"].alive and gone.steps_after_death == 0
    fresh = FakeClient()
    router.replica_back(Replica("r1", [Stage("w-r1", fresh, "frag")], 64, warm=True))
    results = await asyncio.wait_for(asyncio.gather(*(
        collect(router.submit(gen(p, max_tokens=12))) for p in PROMPTS)), timeout=10)
    assert [r[1] for r in results] == expected
    assert fresh.steps > 0


async def test_with_no_other_replica_requests_wait_for_the_restart_and_keep_their_tokens(running) -> None:  # noqa: F811
    """One replica (the default layout): its requests wait in the queue for the restarted replica, are
    prefilled again from prompt + output there, and give the tokens of a run with no failure."""
    expected = await _reference(running)
    router = running(make_router({"r0": DiesAfter(5)}, migration_limit=3, restart_wait_s=30))
    subs = [router.submit(gen(p, max_tokens=12)) for p in PROMPTS]
    while router.replicas["r0"].alive:
        await asyncio.sleep(0.01)
    fresh = FakeClient()
    router.replica_back(Replica("r0", [Stage("w-r0", fresh, "frag")], 64, warm=True))
    results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in subs)), timeout=10)
    assert [r[2] for r in results] == ["length"] * len(PROMPTS)
    assert [r[1] for r in results] == expected
    assert router.metrics.migration_failures._value.get() == 0 and fresh.steps > 0


async def test_requests_waiting_for_a_restart_that_does_not_come_end_with_the_reason(running) -> None:  # noqa: F811
    router = running(make_router({"r0": DiesAfter(2)}, migration_limit=3, restart_wait_s=0.3))
    results = await asyncio.wait_for(asyncio.gather(*(
        collect(router.submit(gen(p, max_tokens=12))) for p in PROMPTS[:3])), timeout=10)
    assert [r[2] for r in results] == ["error"] * 3
    assert all("no replica came back within 0.3 s" in r[3] and "connection refused" in r[3] for r in results), results
    with pytest.raises(Unavailable, match="no worker replica is alive"):
        router.submit(gen(PROMPTS[0]))


async def test_without_restarts_the_requests_of_the_only_replica_end_at_once(running) -> None:  # noqa: F811
    router = running(make_router({"r0": DiesAfter(2)}, migration_limit=3))
    results = await asyncio.wait_for(asyncio.gather(*(
        collect(router.submit(gen(p, max_tokens=12))) for p in PROMPTS[:3])), timeout=10)
    assert [r[2] for r in results] == ["error"] * 3
    assert all("no other replica is left" in r[3] for r in results), results


class Bounded(FakeClient):
    """A worker whose KV cache holds `blocks` blocks of 4 tokens, as the router's scheduler counts them: a step
    that needs more than are free is refused, as the real worker refuses it (ResourceExhausted)."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.blocks = blocks

    async def step(self, fragment_id, seqs, timeout=None):
        after = {sid: len(held) for sid, held in self.seqs.items()}
        for s in seqs:
            after[s.seq_id] = after.get(s.seq_id, 0) + len(s.token_ids)
        needed = sum(-(-n // 4) for n in after.values())
        if needed > self.blocks:
            raise ResourceExhausted(f"KV cache is full: this step needs {needed} blocks, {self.blocks} exist")
        return await super().step(fragment_id, seqs, timeout)


async def test_the_blocks_of_finished_requests_are_released_on_the_worker_before_a_step_reuses_them(running) -> None:  # noqa: F811
    """The router sends a replica's next step before it streams the last one's tokens; the Releases of the
    requests that step ended must still reach the worker first, or a full cache refuses the step (a compare run
    at 32 streams lost 2 requests so before this was fixed)."""

    client = Bounded(blocks=24)
    router = running(make_router({"r0": client}, num_blocks=24))
    prompts = [[i, i + 1, i + 2, i + 3, i + 4] for i in range(1, 17)]
    results = await asyncio.wait_for(asyncio.gather(*(
        collect(router.submit(gen(p, max_tokens=6 + i % 5))) for i, p in enumerate(prompts))), timeout=20)
    assert [r[2] for r in results] == ["length"] * len(prompts), [r[3] for r in results if r[2] != "length"]
    assert await router.wait_idle(5) and client.seqs == {}
