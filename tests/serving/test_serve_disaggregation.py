"""Prefill/decode disaggregation through the real path: genie-serve with SmolLM2 in float32 on two worker
processes, `serving.disaggregation: on` (replica-0 prefills, replica-1 decodes, one KV handoff per request,
worker to worker). Greedy output equals the engine run whole in this process, the handoff bytes equal the
profile's prediction, a prefix the decode worker has cached is not sent again, and two faults end well: the decode worker SIGKILLed in the middle of a handoff (the
prefill worker frees the leased KV and the request completes), and the prefill worker SIGKILLed mid-prefill
(the decode replica prefills the request itself and completes it)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import torch

from conftest import smollm2_config
from genie.serving.tokenizer import Tokenizer
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.engine.loader import load_fragment
from served import child_pids, get_json, get_text, listening_port_pids

pytestmark = pytest.mark.slow

LEASE_S = 3.0
TOKENS = 10


def prompt_ids(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(200, 40000, (length,), generator=g).tolist()


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    spec = FragmentSpec("reference", str(smollm2_dir), dtype="float32", kv_cache_bytes=96 << 20, block_size=16)
    fragment = load_fragment(spec, "cpu")
    fragment.tokenizer = Tokenizer(smollm2_dir)
    return fragment


def greedy(engine, prompt: list[int], tokens: int = TOKENS) -> str:
    """The model run whole, alone, in this process: what colocated serving gives (tested elsewhere)."""
    with torch.no_grad():
        (r,) = engine.step([SeqStep("ref", 0, token_ids=prompt, sample=True)])
        out = [r.token_id]
        while len(out) < tokens:
            (r,) = engine.step([SeqStep("ref", len(prompt) + len(out) - 1, token_ids=[out[-1]], sample=True)])
            out.append(r.token_id)
    engine.release(["ref"])
    return engine.tokenizer.decode(out).rstrip("\ufffd")  # the server holds back a character cut in half


@pytest.fixture(scope="module")
def server(serve_config):
    return serve_config(smollm2_config(
        "float32", workers={"kv_cache_mib": 96, "restart_backoff_s": 0.5}, disaggregation="on",
        handoff_lease_s=LEASE_S, prefill_chunk_tokens=64, max_batch_tokens=256))


def metric(url: str, name: str) -> float:
    lines = get_text(f"{url}/metrics").splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name + " ") or line.startswith(name + "{"))


def worker_of(url: str, replica: str) -> tuple[str, int]:
    """(address, pid) of the worker process serving a replica."""
    _, health = get_json(f"{url}/health")
    (entry,) = [r for r in health["models"][0]["replicas"] if r["name"] == replica]
    address = entry["workers"][0]["address"]
    return address, listening_port_pids(child_pids(url_pid(url)))[int(address.rsplit(":", 1)[1])]


_PIDS: dict[str, int] = {}


def url_pid(url: str) -> int:
    return _PIDS[url]


def sequences_on(url: str, address: str) -> int | None:
    _, body = get_json(f"{url}/v1/genie/workers")
    for worker in body["data"]:
        if worker["address"] == address and "fragments" in worker:
            return sum(f["sequences"] for f in worker["fragments"])
    return None


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, health = get_json(f"{url}/health")
        if all(r["state"] == "ready" for r in health["models"][0]["replicas"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"the replicas did not come back: {health}")


async def complete(url: str, prompt: list[int]) -> tuple[str, str]:
    """One greedy completion of token ids: its text and finish reason."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        answer = await client.completions.create(model="smollm2", prompt=prompt, max_tokens=TOKENS, temperature=0,
                                                 extra_body={"ignore_eos": True})
    finally:
        await client.close()
    return answer.choices[0].text, answer.choices[0].finish_reason


def test_disaggregated_output_equals_the_whole_model_and_handoff_bytes_match(server, engine) -> None:
    _PIDS[server.url] = server.pid
    prompts = [prompt_ids(n, seed) for seed, n in enumerate((40, 130, 300, 77))]

    async def all_at_once():
        return await asyncio.gather(*(complete(server.url, p) for p in prompts))

    answers = asyncio.run(all_at_once())
    for prompt, (text, reason) in zip(prompts, answers, strict=True):
        assert reason == "length"
        assert text == greedy(engine, prompt), f"a {len(prompt)}-token prompt decoded differently"
    # Two more share a 160-token prefix (10 blocks), one after the other: the second finds it cached on the
    # decode worker (the first one's import named its blocks), so only its own tail is sent.
    shared = prompt_ids(160, 99)
    for tail in (prompt_ids(30, 100), prompt_ids(45, 101)):
        text, reason = asyncio.run(complete(server.url, shared + tail))
        assert reason == "length" and text == greedy(engine, shared + tail)
        prompts.append(shared + tail)
    assert metric(server.url, "genie_kv_handoff_cached_tokens_total") == 160
    assert metric(server.url, "genie_kv_handoffs_total") == len(prompts)
    assert metric(server.url, 'genie_kv_handoffs_total{outcome="fallback"}') == 0
    measured = metric(server.url, "genie_kv_handoff_bytes_total")
    predicted = metric(server.url, "genie_kv_handoff_predicted_bytes_total")
    sent = sum(len(p) for p in prompts) - 160
    assert predicted == sent * 30 * 2 * 3 * 64 * 4  # tokens sent x layers x K,V x kv heads x head dim x fp32
    assert abs(measured - predicted) <= 0.05 * predicted, (measured, predicted)
    decode_address, _ = worker_of(server.url, "replica-1")
    _, body = get_json(f"{server.url}/v1/genie/workers")
    assert all(sum(f["sequences"] for f in w["fragments"]) == 0 for w in body["data"])
    assert decode_address in {w["address"] for w in body["data"]}


def test_decode_worker_killed_mid_handoff(server, engine) -> None:
    _PIDS[server.url] = server.pid
    prefill_address, _ = worker_of(server.url, "replica-0")
    _, decode_pid = worker_of(server.url, "replica-1")
    fallbacks = metric(server.url, 'genie_kv_handoffs_total{outcome="fallback"}')
    prompt = prompt_ids(200, 11)
    freed_after: list[float] = []

    async def kill_during_handoff() -> None:
        # The decode worker is stopped, so the handoff that follows the prefill cannot be acknowledged ...
        deadline = time.monotonic() + 10
        while metric(server.url, "genie_kv_handoffs_in_flight") < 1:
            assert time.monotonic() < deadline, "no handoff started"
            await asyncio.sleep(0.02)
        killed = time.monotonic()
        os.kill(decode_pid, signal.SIGKILL)  # ... and dies in the middle of it
        while sequences_on(server.url, prefill_address) != 0:
            await asyncio.sleep(0.05)
        freed_after.append(time.monotonic() - killed)

    async def run():
        task = asyncio.create_task(complete(server.url, prompt))
        await kill_during_handoff()
        return await task

    os.kill(decode_pid, signal.SIGSTOP)
    try:
        text, reason = asyncio.run(run())
    finally:
        try:
            os.kill(decode_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert freed_after and freed_after[0] <= LEASE_S, f"the prefill worker kept the leased KV {freed_after}"
    assert reason == "length" and text == greedy(engine, prompt)
    assert metric(server.url, 'genie_kv_handoffs_total{outcome="fallback"}') == fallbacks + 1
    wait_ready(server.url)  # the supervisor restarts the decode worker, and it rejoins as the decode replica


def test_prefill_worker_killed_mid_prefill(server, engine) -> None:
    _PIDS[server.url] = server.pid
    wait_ready(server.url)
    _, prefill_pid = worker_of(server.url, "replica-0")
    prompt = prompt_ids(1500, 12)  # 24 chunks of 64 tokens: several steps to be killed in
    before = metric(server.url, "genie_prompt_tokens_total")

    async def run():
        task = asyncio.create_task(complete(server.url, prompt))
        deadline = time.monotonic() + 30
        while metric(server.url, "genie_prompt_tokens_total") < before + 128:  # two chunks in
            assert time.monotonic() < deadline, "the prefill did not start"
            await asyncio.sleep(0.02)
        os.kill(prefill_pid, signal.SIGKILL)
        return await task

    text, reason = asyncio.run(run())
    assert reason == "length" and text == greedy(engine, prompt)
    assert metric(server.url, "genie_migrations_total") >= 1
    wait_ready(server.url)
