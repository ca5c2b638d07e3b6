"""The gRPC front door on a real grpc.aio server (127.0.0.1, port 0) over a real Router, Scheduler and the
SmolLM2 tokenizer; only the worker is a fake, played in-process by `FakeWorker`."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from genie.errors import ConfigError
from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc
from genie.serving.generation import ServedModel
from genie.serving.grpc_server import start_grpc_server, stop_grpc_server
from genie.serving.http import HttpState
from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.router import Router
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.serving.tokenizer import Tokenizer
from genie.workers.contract import SeqResult, SeqStep

MODEL = ServedModel("smollm2-test", max_context=256, default_max_tokens=16, created=1_700_000_000)
WORDS = " the quick brown fox jumps over a lazy dog while seven birds sing"


def fake_next_token(words: list[int], ids: list[int]) -> int:
    """The fake model: a stable hash of every id so far picks one of a few whole-word tokens."""
    return words[zlib.crc32(",".join(map(str, ids)).encode()) % len(words)]


@dataclass
class FakeWorker:
    """One worker fragment in-process: KV as token lists, deterministic tokens, a gate that can hold steps."""

    words: list[int]
    kv: dict[str, list[int]] = field(default_factory=dict)  # seq -> ids in KV now
    seen: dict[str, list[int]] = field(default_factory=dict)  # seq -> every id it was sent, kept after release
    released: list[str] = field(default_factory=list)
    sampled: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # set while a step waits at the closed gate
    fail_with: Exception | None = None
    block_size: int = 16  # the scheduler's, to know which ids a named (prefix-cached) block holds
    prefixes: dict[bytes, list[int]] = field(default_factory=dict)  # cached block name -> ids up to its end

    def __post_init__(self) -> None:
        self.gate.set()

    async def step(self, fragment_id: str, seqs: list[SeqStep], timeout: float | None = None) -> list[SeqResult]:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
            self.waiting.clear()
        if self.fail_with is not None:
            raise self.fail_with
        return [self._run(seq) for seq in seqs]

    def _run(self, seq: SeqStep) -> SeqResult:
        if seq.cached_prefix:
            assert seq.seq_id not in self.kv, f"{seq.seq_id}: a cached prefix for a live sequence"
            self.kv[seq.seq_id] = list(self.prefixes[seq.cached_prefix[-1]])
        ids = self.kv.setdefault(seq.seq_id, [])
        assert seq.position == len(ids), f"{seq.seq_id}: chunk at {seq.position}, KV holds {len(ids)}"
        ids.extend(seq.token_ids or [])
        first = seq.position // self.block_size
        for offset, name in enumerate(seq.new_block_hashes):
            self.prefixes.setdefault(name, ids[: (first + offset + 1) * self.block_size])
        self.seen.setdefault(seq.seq_id, []).extend(seq.token_ids or [])
        if not seq.sample:
            return SeqResult(seq.seq_id)
        self.sampled[seq.seq_id] += 1
        token = fake_next_token(self.words, ids)
        if not seq.sampling.logprobs:
            return SeqResult(seq.seq_id, token)
        top = [(token, -0.25)] + [(w, -2.0 - i) for i, w in enumerate(self.words[: seq.sampling.logprobs - 1])]
        return SeqResult(seq.seq_id, token, -0.25, top)

    async def release(self, fragment_id: str, seq_ids: list[str], timeout: float | None = None,
                      evict: tuple[bytes, ...] = ()) -> None:
        for seq_id in seq_ids:
            self.kv.pop(seq_id, None)
            self.released.append(seq_id)
        for name in evict:
            self.prefixes.pop(name, None)


@dataclass
class Front:
    router: Router
    worker: FakeWorker
    replica: Replica
    server: grpc.aio.Server
    port: int
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceStub
    loop_task: asyncio.Task

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        self.loop_task.cancel()
        await asyncio.gather(self.loop_task, return_exceptions=True)

    async def generate(self, **fields) -> list[pb.GenerateResponse]:
        fields.setdefault("model", MODEL.name)
        return [msg async for msg in self.stub.Generate(pb.GenerateRequest(**fields), timeout=30)]

    async def settled(self) -> bool:
        """Waits (up to 10 s) until the router holds no request and every finished one was released."""
        for _ in range(1000):
            if not self.router.scheduler.has_work() and not self.worker.kv:
                return True
            await asyncio.sleep(0.01)
        return False


async def open_front(tokenizer: Tokenizer, max_queue: int = 8, max_running: int = 4, warm: bool = True) -> Front:
    config = SchedulerConfig(
        max_batch_tokens=256, max_running_requests=max_running, max_queue=max_queue,
        prefill_chunk_tokens=128, max_context=MODEL.max_context,
    )
    worker = FakeWorker(tokenizer.encode(WORDS))
    replica = Replica("r0", [Stage("worker-0", worker, "f0")], num_blocks=64, warm=warm)  # type: ignore[arg-type]
    metrics = Metrics()
    router = Router(Scheduler(config, {"r0": 64}, block_size=16), {"r0": replica}, tokenizer, metrics)
    loop_task = asyncio.create_task(router.run())
    server, port = await start_grpc_server(HttpState(router, tokenizer, MODEL, metrics), "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = inference_pb2_grpc.InferenceStub(channel)
    return Front(router, worker, replica, server, port, channel, stub, loop_task)


@pytest.fixture
async def make_front(tokenizer: Tokenizer) -> AsyncIterator[Callable[..., Awaitable[Front]]]:
    opened: list[Front] = []

    async def make(**kwargs) -> Front:
        front = await open_front(tokenizer, **kwargs)
        opened.append(front)
        return front

    yield make
    for front in opened:
        await front.close()


@pytest.fixture
async def front(make_front) -> Front:
    return await make_front()


def reference_ids(worker: FakeWorker, prompt_ids: list[int], n: int) -> list[int]:
    ids, out = list(prompt_ids), []
    for _ in range(n):
        out.append(fake_next_token(worker.words, ids))
        ids.append(out[-1])
    return out


async def test_stream_carries_tokens_and_text_that_decode_alike(front: Front, tokenizer: Tokenizer) -> None:
    prompt = "Once upon a time"
    msgs = await front.generate(prompt=prompt, max_tokens=12, ignore_eos=True)
    ids = [t for m in msgs for t in m.token_ids]
    assert len(msgs) > 1, "tokens should stream in several messages, not one"
    assert ids == reference_ids(front.worker, tokenizer.encode(prompt), 12)
    assert "".join(m.text for m in msgs) == tokenizer.decode(ids)
    assert {m.request_id for m in msgs} == {msgs[0].request_id} and msgs[0].request_id
    *body, last = msgs
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(tokenizer.encode(prompt)), 12)
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not m.HasField("usage") for m in body)
    assert await front.settled()
    assert msgs[0].request_id in front.worker.released


async def test_messages_go_through_the_chat_template(front: Front, tokenizer: Tokenizer) -> None:
    from genie.serving.protocol import ChatMessage

    chat = [pb.ChatMessage(role="system", content="Be brief."), pb.ChatMessage(role="user", content="Hi!")]
    msgs = await front.generate(messages=chat, max_tokens=3)
    expected = tokenizer.encode_chat((ChatMessage("system", "Be brief."), ChatMessage("user", "Hi!")))
    assert front.worker.seen[msgs[0].request_id][: len(expected)] == expected
    assert msgs[-1].usage.prompt_tokens == len(expected)


async def test_prompt_token_ids_are_sent_as_given(front: Front) -> None:
    msgs = await front.generate(prompt_token_ids=[504, 3458, 314], max_tokens=2)
    assert front.worker.seen[msgs[0].request_id][:3] == [504, 3458, 314]
    assert msgs[-1].usage.completion_tokens == 2


async def test_default_model_and_max_tokens_apply_when_unset(front: Front) -> None:
    msgs = await front.generate(model="", prompt="Hello", ignore_eos=True)
    assert msgs[-1].usage.completion_tokens == MODEL.default_max_tokens
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def test_stop_string_ends_the_text_before_it(front: Front) -> None:
    full = "".join(m.text for m in await front.generate(prompt="Tell me", max_tokens=20, ignore_eos=True))
    stop = " fox" if " fox" in full[1:] else full.split()[2]
    assert stop in full
    msgs = await front.generate(prompt="Tell me", max_tokens=20, ignore_eos=True, stop=[stop])
    assert "".join(m.text for m in msgs) == full[: full.index(stop)]
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_logprobs_come_one_per_token_with_the_top_alternatives(front: Front) -> None:
    msgs = await front.generate(prompt="Hello", max_tokens=4, logprobs=2)
    for m in msgs:
        assert [lp.token_id for lp in m.logprobs] == list(m.token_ids)
        assert all(len(lp.top) == 2 and lp.top[0].token_id == lp.token_id for lp in m.logprobs)
    assert sum(len(m.logprobs) for m in msgs) == 4


async def test_list_models(front: Front) -> None:
    reply = await front.stub.ListModels(pb.ListModelsRequest())
    assert [(m.id, m.max_context, m.created) for m in reply.models] == [
        (MODEL.name, MODEL.max_context, MODEL.created)
    ]


async def test_health_reports_readiness_with_reasons(make_front) -> None:
    front = await make_front(warm=False)
    cold = await front.stub.Health(pb.HealthRequest())
    assert cold.live and not cold.ready
    assert any("replica r0" in r for r in cold.reasons)
    front.replica.warm = True
    warm = await front.stub.Health(pb.HealthRequest())
    assert warm.live and warm.ready and not warm.reasons


async def test_port_in_use_is_a_config_error(front: Front, tokenizer: Tokenizer) -> None:
    with pytest.raises(ConfigError, match=f"127.0.0.1:{front.port}"):
        await start_grpc_server(HttpState(front.router, tokenizer, MODEL, Metrics()), "127.0.0.1", front.port)


async def test_stop_with_grace_cancels_running_streams_and_frees_their_kv(front: Front) -> None:
    front.worker.gate.clear()
    call = front.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=50, ignore_eos=True))
    await asyncio.wait_for(front.worker.waiting.wait(), 10)
    await stop_grpc_server(front.server, grace_s=0.2)
    front.worker.gate.set()
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    assert await front.settled()
    [seq_id] = front.worker.seen
    assert seq_id in front.worker.released and front.worker.sampled[seq_id] < 50

