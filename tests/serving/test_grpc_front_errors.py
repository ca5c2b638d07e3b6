"""The gRPC front door's failure paths: every bad call gets a clear status, loses nothing, and the server
keeps serving. Same real server, router and tokenizer as test_grpc_front.py; the worker is the fake."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from test_grpc_front import MODEL, Front, make_front  # noqa: F401 (make_front is a fixture)

from genie.errors import InvalidRequest
from genie.protos import inference_pb2 as pb

BAD_REQUESTS = [
    ({"prompt": ""}, "'prompt' must not be empty"),
    ({"prompt": "Hi", "temperature": 5.0}, "'temperature' must be between 0 and 2, got 5.0"),
    ({"prompt": "Hi", "top_p": 0.0}, "'top_p' must be in (0, 1]"),
    ({"prompt": "Hi", "max_tokens": 0}, "'max_tokens' must be > 0"),
    ({"prompt": "Hi", "max_tokens": 1000}, "exceeds the model's context of 256 tokens; ask for at most 255"),
    ({"prompt": "word " * 300}, "leaving no room for output"),
    ({"prompt": "Hi", "messages": [pb.ChatMessage(role="user", content="Hi")]}, "this request has prompt and messages"),
    ({}, "give exactly one of 'prompt', 'messages' or 'prompt_token_ids'; this request has none"),
    ({"messages": [pb.ChatMessage(role="robot", content="Hi")]}, "'messages[0].role' must be"),
    ({"prompt_token_ids": [1, 99999]}, "outside the vocabulary [0, 49152): [99999]"),
    ({"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, "'stop' takes at most 4 sequences"),
    ({"prompt": "Hi", "logprobs": 21}, "'logprobs' must be between 0 and 20"),
]


@pytest.fixture
async def front(make_front) -> Front:  # noqa: F811
    return await make_front()


async def status_of(front: Front, **fields) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await front.generate(**fields)
    return info.value


@pytest.mark.parametrize(("fields", "message"), BAD_REQUESTS, ids=[m[:30] for _, m in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument_with_a_clear_message(front: Front, fields: dict, message: str) -> None:
    err = await status_of(front, **fields)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.details()
    assert not front.router.scheduler.has_work() and not front.worker.seen
    assert (await front.generate(prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1


async def test_unknown_model_is_not_found_and_names_the_served_one(front: Front) -> None:
    err = await status_of(front, model="gpt-9", prompt="Hi")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "'gpt-9' is not served here" in err.details() and MODEL.name in err.details()


async def wait_for(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_full_queue_is_resource_exhausted_and_the_queued_requests_still_finish(
    make_front, monkeypatch  # noqa: F811
) -> None:
    front = await make_front(max_queue=1, max_running=1)
    submitted = []
    submit = front.router.submit
    monkeypatch.setattr(front.router, "submit", lambda gen: submitted.append(submit(gen)) or submitted[-1])
    front.worker.gate.clear()
    running = asyncio.create_task(front.generate(prompt="first", max_tokens=3))
    await asyncio.wait_for(front.worker.waiting.wait(), 10)  # admitted, its step held at the gate
    queued = asyncio.create_task(front.generate(prompt="second", max_tokens=3))
    await wait_for(lambda: len(submitted) == 2, "the second request to be queued")
    err = await status_of(front, prompt="third", max_tokens=3)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queue is 1" in err.details() and "retry later" in err.details()
    front.worker.gate.set()
    for task in (running, queued):
        assert (await task)[-1].usage.completion_tokens == 3
    assert await front.settled()


async def test_client_cancel_aborts_the_request_and_frees_its_kv(front: Front, monkeypatch, caplog) -> None:
    aborted: list[str] = []
    abort = front.router.abort
    monkeypatch.setattr(front.router, "abort", lambda rid: (aborted.append(rid), abort(rid)))
    call = front.stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=200, ignore_eos=True))
    first = await call.read()
    front.worker.gate.clear()  # hold the next step so the request cannot finish before the cancel lands
    call.cancel()
    await wait_for(lambda: aborted, "the server to see the cancel")
    assert aborted == [first.request_id]
    front.worker.gate.set()
    assert await front.settled()
    assert first.request_id in front.worker.released
    assert front.worker.sampled[first.request_id] < 200
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], "a cancel is not an error"


async def test_worker_failure_ends_the_stream_unavailable_with_the_reason(front: Front) -> None:
    front.worker.fail_with = InvalidRequest("fragment f0 has no KV block left")
    err = await status_of(front, prompt="Hi", max_tokens=3)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "the worker failed this step: fragment f0 has no KV block left" in err.details()
    front.worker.fail_with = None
    assert await front.settled()
    assert (await front.generate(prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1


async def test_unexpected_error_is_internal_and_logged(front: Front, monkeypatch, caplog) -> None:
    def broken(text: str) -> list[int]:
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(front.router.tokenizer, "encode", broken)
    err = await status_of(front, prompt="Hi")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal server error in Generate; the server log has the details"
    assert "tokenizer exploded" in caplog.text
    monkeypatch.undo()
    assert (await front.generate(prompt="Hi", max_tokens=1))[-1].usage.completion_tokens == 1


async def test_shutting_down_router_is_unavailable(front: Front) -> None:
    front.router.accepting = False
    err = await status_of(front, prompt="Hi")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in err.details()
