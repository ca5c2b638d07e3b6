"""The router loop against fake worker clients: streaming, stop strings, abort, release, worker failure."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from genie.errors import ResourceExhausted, Unavailable
from genie.protos import worker_pb2 as pb
from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.router import GenerationRequest, Router
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.workers.contract import SamplingParams, SeqResult

VOCAB = 50
EOS = 0


class FakeTokenizer:
    eos_token_ids = frozenset({EOS})
    vocab_size = VOCAB

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids if i != EOS)


class FakeClient:
    """Plays one worker: checks positions, holds sequences until released, samples from a hash of the ids, and
    hands a sequence's KV to another FakeClient by address (SendKV), freeing its own copy either way."""

    peers: dict[str, FakeClient] = {}

    def __init__(self, fail_with: Exception | None = None, gate: asyncio.Event | None = None,
                 refuse_imports: bool = False) -> None:
        self.address = f"fake-{id(self)}"
        FakeClient.peers[self.address] = self
        self.refuse_imports = refuse_imports
        self.handed: list[str] = []
        self.seqs: dict[str, list[int]] = {}
        self.released: list[str] = []
        self.evicted: list[bytes] = []
        self.fail_with = fail_with
        self.gate = gate
        self.steps = 0

    async def step(self, fragment_id, seqs, timeout=None):
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.steps += 1
        out = []
        for s in seqs:
            held = self.seqs.setdefault(s.seq_id, [])
            assert s.position == len(held), f"{s.seq_id}: position {s.position} but holds {len(held)}"
            held.extend(s.token_ids)
            token = 1 + zlib.crc32(repr(held).encode()) % (VOCAB - 1) if s.sample else None
            out.append(SeqResult(s.seq_id, token_id=token))
        return out

    async def send_kv(self, fragment_id, seq_id, target, target_fragment_id, lease_s, timeout=None, skip_tokens=0,
                      prefix=(), new_hashes=()):
        held = self.seqs.pop(seq_id)  # freed here whatever happens next, as the worker does
        peer = FakeClient.peers[target]
        if peer.refuse_imports or seq_id in peer.seqs:
            return pb.SendKVResponse(delivered=False, error="the receiver refused the KV")
        peer.seqs[seq_id] = held
        self.handed.append(seq_id)
        sent = len(held) - skip_tokens
        return pb.SendKVResponse(delivered=True, tokens=sent, bytes=8 * sent, seconds=0.001)

    async def release(self, fragment_id, seq_ids, timeout=None, evict=()):
        self.evicted.extend(evict)
        for sid in seq_ids:
            self.seqs.pop(sid, None)
            self.released.append(sid)
        return len(seq_ids)


def make_router(clients: dict[str, FakeClient], max_queue: int = 16, num_blocks: int = 64,
                migration_limit: int = 0, roles: dict[str, str] | None = None,
                restart_wait_s: float | None = None) -> Router:
    replicas = {
        name: Replica(name, [Stage(f"w-{name}", client, "frag")], num_blocks, warm=True)
        for name, client in clients.items()
    }
    config = SchedulerConfig(max_batch_tokens=64, max_running_requests=8, max_queue=max_queue,
                             prefill_chunk_tokens=16, max_context=256, migration_limit=migration_limit,
                             wait_for_restart=restart_wait_s is not None)
    scheduler = Scheduler(config, {n: num_blocks for n in clients}, block_size=4, roles=roles)
    return Router(scheduler, replicas, FakeTokenizer(), Metrics(), step_timeout=5, kv_bytes_per_token=8,
                  restart_wait_s=restart_wait_s)


def gen(prompt: list[int], max_tokens: int = 6, stop: tuple[str, ...] = ()) -> GenerationRequest:
    return GenerationRequest(prompt, max_tokens, SamplingParams(), stop)


async def collect(sub) -> tuple[str, list[int], str | None, str | None]:
    text, ids, reason, error = "", [], None, None
    async for d in sub.deltas():
        text += d.text
        ids += d.token_ids
        reason, error = d.finish_reason, d.error
    return text, ids, reason, error


@pytest.fixture
async def running():
    tasks = []

    def start(router: Router) -> Router:
        tasks.append(asyncio.create_task(router.run()))
        return router

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_streams_tokens_and_releases_finished(running) -> None:
    client = FakeClient()
    router = running(make_router({"r0": client}))
    text, ids, reason, _ = await collect(router.submit(gen([5, 6, 7], max_tokens=6)))
    assert reason == "length" and len(ids) == 6
    assert text == FakeTokenizer().decode(ids)
    assert await router.wait_idle(5)
    assert client.seqs == {} and len(client.released) == 1
    assert router.scheduler.kv_usage() == {"r0": (0, 64)}


async def test_counts_prompt_and_generated_tokens(running) -> None:
    router = running(make_router({"r0": FakeClient()}))
    # 40 prompt tokens arrive in chunks of 16 (prefill_chunk_tokens); the decodes after them are not prompt
    await asyncio.gather(collect(router.submit(gen(list(range(1, 41)), max_tokens=5))),
                         collect(router.submit(gen([5, 6, 7], max_tokens=2))))
    assert router.metrics.prompt_tokens._value.get() == 43
    assert router.metrics.generated._value.get() == 7


async def test_stop_string_ends_request_and_frees_kv(running) -> None:
    client = FakeClient()
    router = running(make_router({"r0": client}))
    _, ids, _, _ = await collect(router.submit(gen([9, 9], max_tokens=8)))
    stop = f"<{ids[2]}>"
    text, ids2, reason, _ = await collect(router.submit(gen([9, 9], max_tokens=8, stop=(stop,))))
    assert reason == "stop"
    assert stop not in text and text == FakeTokenizer().decode(ids[:2])
    assert await router.wait_idle(5)
    assert client.seqs == {}


async def test_a_stop_string_counts_only_after_min_tokens(running) -> None:
    router = running(make_router({"r0": FakeClient()}))
    _, ids, _, _ = await collect(router.submit(gen([9, 9], max_tokens=8)))
    stop = f"<{ids[1]}>"  # the second token's text: it would end the text after one token
    held = GenerationRequest([9, 9], 8, SamplingParams(min_tokens=3, prompt_len=2), (stop,))
    text, ids2, reason, _ = await collect(router.submit(held))
    assert ids2 == ids and reason == "length"  # within the first 3 tokens it does not count
    assert text == FakeTokenizer().decode(ids)
    later = f"<{ids[4]}>"  # after min_tokens it does
    text, ids3, reason, _ = await collect(router.submit(
        GenerationRequest([9, 9], 8, SamplingParams(min_tokens=3, prompt_len=2), (later,))))
    assert reason == "stop" and text == FakeTokenizer().decode(ids[:4])


async def test_abort_frees_blocks(running) -> None:
    client = FakeClient()
    router = running(make_router({"r0": client}))
    sub = router.submit(gen([1, 2, 3], max_tokens=200))
    async for delta in sub.deltas():
        if delta.token_ids:
            break
    router.abort(sub.request_id)
    assert await router.wait_idle(5)
    assert client.seqs == {}
    assert router.scheduler.kv_usage() == {"r0": (0, 64)}


async def test_dead_replica_ends_its_requests_with_an_error(running) -> None:
    good, bad = FakeClient(), FakeClient(fail_with=Unavailable("worker at 127.0.0.1:1 did not answer Step"))
    router = running(make_router({"r0": good, "r1": bad}))
    results = await asyncio.gather(*(collect(router.submit(gen([i, i + 1]))) for i in range(1, 5)))
    reasons = [r[2] for r in results]
    assert "error" in reasons and "length" in reasons
    errors = [r[3] for r in results if r[2] == "error"]
    assert all("did not answer Step" in e for e in errors)
    assert not router.replicas["r1"].alive
    assert router.ready, "one replica still serves the model"
    assert any("replica r1" in reason for reason in router.not_ready_reasons())
    # New work goes to the live replica only.
    _, _, reason, _ = await collect(router.submit(gen([3, 4])))
    assert reason == "length"


async def test_queue_full_is_refused_at_submit(running) -> None:
    gate = asyncio.Event()
    router = running(make_router({"r0": FakeClient(gate=gate)}, max_queue=2))
    subs = [router.submit(gen([1, 2], max_tokens=2)) for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="retry later"):
        router.submit(gen([1, 2]))
    gate.set()
    for sub in subs:
        assert (await collect(sub))[2] == "length"


async def test_draining_refuses_new_requests(running) -> None:
    router = running(make_router({"r0": FakeClient()}))
    router.stop_accepting()
    with pytest.raises(Unavailable, match="shutting down"):
        router.submit(gen([1]))


@pytest.mark.parametrize("refuse", [False, True], ids=["handed-off", "refused"])
async def test_disaggregated_requests_prefill_on_one_replica_and_decode_on_the_other(running, refuse) -> None:
    alone = running(make_router({"r0": FakeClient()}))
    prompts = [[i, i + 1, i + 2] * (i + 1) for i in range(1, 6)]
    expected = await asyncio.gather(*(collect(alone.submit(gen(p, max_tokens=8))) for p in prompts))
    prefill, decode = FakeClient(), FakeClient(refuse_imports=refuse)
    router = running(make_router({"p": prefill, "d": decode}, roles={"p": "prefill", "d": "decode"}))
    got = await asyncio.gather(*(collect(router.submit(gen(p, max_tokens=8))) for p in prompts))
    assert got == expected  # the same tokens, whichever worker decoded them
    assert await router.wait_idle(5)
    assert prefill.seqs == {} and decode.seqs == {}
    assert all(used == 0 for used, _ in router.scheduler.kv_usage().values())
    handoffs = router.metrics.handoffs
    if refuse:  # every handoff failed: the decode replica prefilled each request itself
        assert handoffs.labels("fallback")._value.get() == len(prompts) and not prefill.handed
        assert router.scheduler.handoff_fallbacks == len(prompts)
    else:
        assert handoffs.labels("delivered")._value.get() == len(prompts) == len(prefill.handed)
        assert router.metrics.handoff_bytes._value.get() == router.metrics.handoff_predicted_bytes._value.get()
