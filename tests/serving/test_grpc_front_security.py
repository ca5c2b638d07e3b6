"""The gRPC front door's guard: API keys on every RPC of every hosted service, message size and form checked
before a servicer runs (INVALID_ARGUMENT, never INTERNAL or RESOURCE_EXHAUSTED), and TLS. Real grpc.aio
server over the real router and tokenizer; the worker is test_grpc_front's fake."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from test_grpc_front import MODEL, FakeWorker, WORDS
from test_http_security import KEY, KEYS
from tls_certs import self_signed

from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc
from genie.serving.grpc_server import start_grpc_server
from genie.serving.http import HttpState
from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.router import Router
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.serving.tokenizer import Tokenizer

LIMIT = 64 << 10
GENERATE = "/genie.inference.Inference/Generate"
ECHO = "/test.Echo/Say"
CHAT = "/test.Echo/Chat"


def make_router(tok: Tokenizer) -> tuple[Router, FakeWorker]:
    config = SchedulerConfig(max_batch_tokens=256, max_running_requests=4, max_queue=8, prefill_chunk_tokens=128,
                             max_context=MODEL.max_context)
    worker = FakeWorker(tok.encode(WORDS))
    replica = Replica("r0", [Stage("worker-0", worker, "f0")], num_blocks=64, warm=True)  # type: ignore[arg-type]
    return Router(Scheduler(config, {"r0": 64}, block_size=16), {"r0": replica}, tok, Metrics()), worker


def add_echo(server: grpc.aio.Server) -> None:
    """A second hosted service (as the KServe v2 door will be): bytes in, the same bytes out, one call or a
    bidirectional stream."""
    async def say(request: bytes, context) -> bytes:
        return request

    async def chat(requests, context):
        async for request in requests:
            yield request

    handlers = {"Say": grpc.unary_unary_rpc_method_handler(say), "Chat": grpc.stream_stream_rpc_method_handler(chat)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])


class Door:
    def __init__(self, tok: Tokenizer, keys=KEYS, tls=None) -> None:
        self.tok, self.keys, self.tls = tok, keys, tls

    async def __aenter__(self) -> Door:
        self.router, self.worker = make_router(self.tok)
        self.loop_task = asyncio.create_task(self.router.run())
        state = HttpState(self.router, self.tok, MODEL, Metrics(), max_body_bytes=LIMIT)
        self.server, self.port = await start_grpc_server(state, "127.0.0.1", 0, keys=self.keys, tls=self.tls,
                                                         services=[add_echo])
        if self.tls is None:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=self.tls[0])
            self.channel = grpc.aio.secure_channel(f"localhost:{self.port}", creds)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(0)
        self.loop_task.cancel()
        await asyncio.gather(self.loop_task, return_exceptions=True)

    async def generate(self, metadata=(("authorization", f"Bearer {KEY}"),), **fields) -> list[pb.GenerateResponse]:
        request = pb.GenerateRequest(model=MODEL.name, **fields)
        return [m async for m in self.stub.Generate(request, metadata=metadata, timeout=30)]

    async def raw(self, method: str, payload: bytes, streaming: bool) -> list[bytes]:
        metadata = (("authorization", f"Bearer {KEY}"),)
        if streaming:
            call = self.channel.unary_stream(method)(payload, metadata=metadata, timeout=10)
            return [m async for m in call]
        return [await self.channel.unary_unary(method)(payload, metadata=metadata, timeout=10)]


async def code_of(coro) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


METADATA = [(), (("authorization", "Bearer sk-wrong"),), (("authorization", KEY),), (("authorization", ""),)]


@pytest.mark.parametrize("metadata", METADATA, ids=["none", "wrong", "no-scheme", "empty"])
async def test_every_rpc_of_every_service_needs_a_key(tokenizer: Tokenizer, metadata) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        calls = [
            door.generate(metadata=metadata, prompt="Hi", max_tokens=2),
            door.stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
            door.stub.Health(pb.HealthRequest(), metadata=metadata),
            door.channel.unary_unary(ECHO)(b"hello", metadata=metadata),
        ]
        for call in calls:
            err = await code_of(call)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in err.details() and "sk-" not in err.details()
        assert not door.worker.seen


async def test_the_right_key_works_on_every_service(tokenizer: Tokenizer) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        msgs = await door.generate(prompt="Hi", max_tokens=2, ignore_eos=True)
        assert msgs[-1].usage.completion_tokens == 2
        assert (await door.raw(ECHO, b"hello", streaming=False)) == [b"hello"]


async def test_no_keys_means_open(tokenizer: Tokenizer) -> None:  # noqa: F811
    from genie.auth import KeySet

    async with Door(tokenizer, keys=KeySet()) as door:
        assert (await door.generate(metadata=(), prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1


async def test_a_message_over_the_limit_is_invalid_argument(tokenizer: Tokenizer) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        for size in (LIMIT + 1, 3 * LIMIT):
            big = pb.GenerateRequest(model=MODEL.name, prompt="x" * size).SerializeToString()
            err = await code_of(door.raw(GENERATE, big, streaming=True))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert f"at most {LIMIT} bytes" in err.details()
        err = await code_of(door.raw(ECHO, b"x" * (LIMIT + 1), streaming=False))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not door.worker.seen


@pytest.mark.parametrize("payload", [b"\x12\x02\xff\xfe", b"\x12\x10abc", b"\x08", b"\xff" * 8, b"\x12\x01\x80"],
                         ids=["bad-utf8-prompt", "truncated-string", "truncated-varint", "garbage", "lone-byte"])
async def test_bytes_that_are_not_a_request_are_invalid_argument(tokenizer: Tokenizer, payload: bytes) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        err = await code_of(door.raw(GENERATE, payload, streaming=True))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "not valid protobuf" in err.details()
        assert (await door.generate(prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1


@pytest.mark.parametrize(("fields", "words"), [
    ({"prompt": "Hi", "top_k": 2**31 - 1, "max_tokens": 1}, None),
    ({"prompt": "Hi", "top_k": -5}, "'top_k' must be between 0"),
    ({"prompt": "Hi", "temperature": float("nan")}, "'temperature' must be a finite number"),
    ({"prompt": "Hi", "top_p": float("inf")}, "'top_p' must be a finite number"),
    ({"prompt": "Hi", "logprobs": -1}, "'logprobs' must be between 0 and 20"),
    ({"prompt": "Hi", "max_tokens": -1}, "'max_tokens' must be > 0"),
    ({"prompt": "x" * (MODEL.max_prompt_chars + 1)}, "characters, more than this model's context"),
    ({"messages": [pb.ChatMessage(role="user", content="x" * (MODEL.max_prompt_chars + 1))]}, "'messages' has"),
    ({"prompt_token_ids": [-1]}, "outside the vocabulary"),
])
async def test_grpc_fields_are_checked_like_http(tokenizer: Tokenizer, fields: dict, words) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        if words is None:
            assert (await door.generate(**fields))[-1].usage.completion_tokens == 1
            return
        err = await code_of(door.generate(**fields))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err


async def test_tls(tokenizer: Tokenizer, tmp_path: Path) -> None:  # noqa: F811
    cert, key = self_signed(tmp_path)
    async with Door(tokenizer, tls=(cert.read_bytes(), key.read_bytes())) as door:
        assert (await door.generate(prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1
        plain = grpc.aio.insecure_channel(f"127.0.0.1:{door.port}")
        err = await code_of(plain.unary_unary("/genie.inference.Inference/Health")(b"", timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        await plain.close()


async def test_streamed_requests_are_checked_one_by_one(tokenizer: Tokenizer) -> None:  # noqa: F811
    async with Door(tokenizer) as door:
        metadata = (("authorization", f"Bearer {KEY}"),)
        chat = door.channel.stream_stream(CHAT)
        assert [m async for m in chat(iter([b"a", b"bc"]), metadata=metadata, timeout=10)] == [b"a", b"bc"]
        replies: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for m in chat(iter([b"ok", b"x" * (LIMIT + 1)]), metadata=metadata, timeout=10):
                replies.append(m)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and replies == [b"ok"]
        err = await code_of(chat(iter([b"a"]), timeout=10).read())
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
