"""genie-serve under overload: 429s with Retry-After, admitted requests complete, memory and KV stay bounded."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Tell me a long story about a dragon."}]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _ready(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def _chat(session: aiohttp.ClientSession, url: str, max_tokens: int, stream: bool = False,
                started: asyncio.Event | None = None):
    body = {"model": "smollm2", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if not stream or resp.status != 200:
            return resp.status, dict(resp.headers), await resp.json()
        events = []
        async for line in resp.content:
            events.append(line)
            if started is not None and b'"content"' in line:
                started.set()  # this request is decoding on its worker
        return resp.status, dict(resp.headers), b"".join(events).decode()


@pytest.fixture(scope="module")
def small_server(serve_smollm2):
    return serve_smollm2(max_queue=4, max_running_requests=2, max_batch_tokens=512, prefill_chunk_tokens=256)


def test_overload_gets_429_and_memory_returns(small_server) -> None:
    url = small_server.url

    async def burst(n: int):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            return await asyncio.gather(*(_chat(session, url, 16) for _ in range(n)))

    asyncio.run(burst(2))  # warm caches before measuring the baseline
    baseline = _rss_mib(small_server.pid)
    results = asyncio.run(burst(40))
    statuses = [r[0] for r in results]
    assert statuses.count(429) > 0, statuses
    assert set(statuses) <= {200, 429}, statuses
    for status, headers, body in results:
        if status == 429:
            assert headers.get("Retry-After") == "1"
            assert "retry later" in body["error"]["message"]
        else:
            assert body["usage"]["completion_tokens"] == 16
    asyncio.run(burst(2))
    after = _rss_mib(small_server.pid)
    assert after - baseline < 64, f"RSS grew from {baseline:.0f} MiB to {after:.0f} MiB"
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    used = [line for line in metrics.splitlines() if line.startswith("genie_kv_blocks_used{")]
    assert used and all(line.endswith(" 0.0") for line in used), used


# GENIE_SOAK_S=600 for a long soak; 30 s still samples RSS four times after the warm-up
SOAK_S = float(os.environ.get("GENIE_SOAK_S", "30"))


def test_ten_times_overload_soak_stays_bounded(small_server) -> None:
    """60 clients (10x the 2 running + 4 queued the server admits) for SOAK_S seconds."""
    url = small_server.url
    counts = {"ok": 0, "busy": 0}
    rss: list[float] = []

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        while time.monotonic() < deadline:
            status, headers, body = await _chat(session, url, 8)
            if status == 429:
                assert headers.get("Retry-After") == "1", headers
                counts["busy"] += 1
                await asyncio.sleep(0.05)  # the client's own back-off, as a real one would
            else:
                assert status == 200, (status, body)
                assert body["usage"]["completion_tokens"] == 8, body
                counts["ok"] += 1

    async def sample(deadline: float, warm_up: float) -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(5)
            if time.monotonic() > warm_up:
                rss.append(_rss_mib(small_server.pid))

    async def soak() -> None:
        began = time.monotonic()
        deadline = began + SOAK_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            await asyncio.gather(sample(deadline, began + min(20.0, SOAK_S / 3)),
                                 *(client(session, deadline) for _ in range(60)))

    asyncio.run(soak())
    print(f"soak {SOAK_S:.0f} s, 60 clients: {counts['ok']} completed, {counts['busy']} got 429; "
          f"RSS after warm-up {min(rss):.0f}-{max(rss):.0f} MiB")
    assert counts["busy"] > 0 and counts["ok"] > 0, counts
    assert rss and max(rss) - min(rss) < 64, f"RSS moved from {min(rss):.0f} to {max(rss):.0f} MiB"
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    used = [line for line in metrics.splitlines() if line.startswith("genie_kv_blocks_used{")]
    assert used and all(line.endswith(" 0.0") for line in used), used
    assert _ready(url)[0] == 200
