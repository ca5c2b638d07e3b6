"""What the router does per step, kept cheap (issue 16): gauges published on a period while busy and always
once idle, the tokens/s window kept as a running sum, a one-stage replica's step passed through as it is."""

from __future__ import annotations

import asyncio

import pytest
from test_router import FakeClient, collect, gen, make_router

from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.router_gauges import GAUGE_PERIOD_S
from genie.workers.contract import SeqStep


def gauge(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def test_tokens_per_second_covers_the_last_ten_seconds() -> None:
    m = Metrics()
    for i in range(11):
        m.observe_tokens(float(i), 5)  # 5 tokens a second for 10 s
    assert gauge(m, "genie_generation_tokens_per_second") == pytest.approx(55 / 10)
    m.observe_tokens(20.0, 30)  # what is more than 10 s old falls out of the window: the one at 10 s stays
    assert gauge(m, "genie_generation_tokens_per_second") == pytest.approx(35 / 10)
    m.observe_tokens(21.0, 10)
    assert gauge(m, "genie_generation_tokens_per_second") == pytest.approx(40 / 1)


async def test_gauges_wait_for_their_period_while_busy_and_are_published_once_idle() -> None:
    gate = asyncio.Event()
    now = [100.0]
    router = make_router({"r0": FakeClient(gate=gate)})
    router.clock = lambda: now[0]
    loop = asyncio.create_task(router.run())
    try:
        await _gauges_follow_the_period(router, gate, now)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def _gauges_follow_the_period(router, gate: asyncio.Event, now: list[float]) -> None:
    await asyncio.sleep(0)
    assert gauge(router.metrics, "genie_running_requests") == 0  # the idle loop published at once
    first = router.submit(gen([1, 2, 3], max_tokens=3))
    for _ in range(20):  # the loop admits it and sends its step, which waits at the gate
        await asyncio.sleep(0)
    assert router.scheduler.num_running() == 1
    assert gauge(router.metrics, "genie_running_requests") == 0, "published within the period"
    now[0] += 0.3
    second = router.submit(gen([4, 5, 6], max_tokens=3))
    for _ in range(20):
        await asyncio.sleep(0)
    assert gauge(router.metrics, "genie_running_requests") == 1, "a period passed: the next loop turn publishes"
    gate.set()
    await asyncio.gather(collect(first), collect(second))
    assert await router.wait_idle(5)
    assert gauge(router.metrics, "genie_running_requests") == 0
    assert gauge(router.metrics, "genie_kv_blocks_used", replica="r0") == 0


async def test_a_publish_skipped_in_the_period_is_made_up_while_the_loop_waits() -> None:
    # The router's clock stands still, so no loop turn could publish: only the owed publish can. (A handoff to a
    # stopped decode worker left genie_kv_handoffs_in_flight at 0 for the whole lease this way.)
    gate = asyncio.Event()
    router = make_router({"r0": FakeClient(gate=gate)})
    router.clock = lambda: 100.0
    loop = asyncio.create_task(router.run())
    try:
        await asyncio.sleep(0)
        request = router.submit(gen([1, 2, 3], max_tokens=3))
        for _ in range(20):
            await asyncio.sleep(0)
        assert router.scheduler.num_running() == 1 and not gate.is_set()
        assert gauge(router.metrics, "genie_running_requests") == 0, "published within the period"
        await asyncio.sleep(GAUGE_PERIOD_S * 2)  # the step still waits at the gate: the loop takes no turn
        assert gauge(router.metrics, "genie_running_requests") == 1
        gate.set()
        await collect(request)
        assert await router.wait_idle(5)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_one_stage_replica_sends_the_router_seqs_as_they_are() -> None:
    seen = []

    class Client:
        async def step(self, fragment_id, seqs, timeout=None):
            seen.append(seqs)
            return []

    replica = Replica("r0", [Stage("w0", Client(), "frag")], 8)
    seqs = [SeqStep("a", 0, token_ids=[1, 2], sample=True)]
    await replica.step(seqs, timeout=1.0)
    assert seen == [seqs] and seen[0][0] is seqs[0] and replica.steps == 1
