"""A user error raised inside the router loop reaches the client as the same 4xx, not a 503."""

from __future__ import annotations

import json

from http_front import http_front
from test_router import FakeClient, collect, gen, make_router, running  # noqa: F401  (fixture)

from genie.errors import InvalidRequest
from genie.serving.tokenizer import Tokenizer

# 4 blocks of 16 tokens: one sequence holds 64 tokens, below the test model's context of 256, so the door lets
# a 100-token prompt through and the scheduler, inside the router loop, refuses it.
SMALL_KV_BLOCKS = 4
LONG_PROMPT = list(range(1000, 1100))


async def test_the_router_hands_back_the_error_itself(running) -> None:  # noqa: F811
    router = running(make_router({"r0": FakeClient()}, num_blocks=4))  # 16 tokens per sequence
    sub = router.submit(gen(list(range(1, 30)), max_tokens=4))
    deltas = [d async for d in sub.deltas()]
    failure = deltas[-1].failure
    assert deltas[-1].finish_reason == "error" and isinstance(failure, InvalidRequest)
    assert "largest KV cache holds 16 tokens" in str(failure)


async def test_http_answers_400_for_an_error_found_inside_the_router(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer, num_blocks=SMALL_KV_BLOCKS) as front:
        body = {"model": "smollm2-test", "prompt": LONG_PROMPT, "max_tokens": 8}
        resp = await front.client.post("/v1/completions", data=json.dumps(body),
                                       headers={"Content-Type": "application/json"})
        reply = await resp.json()
        assert resp.status == 400, reply
        assert reply["error"]["type"] == "invalid_request_error"
        assert "largest KV cache holds 64 tokens" in reply["error"]["message"]


async def test_a_stream_gets_the_same_status_in_its_error_event(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer, num_blocks=SMALL_KV_BLOCKS) as front:
        body = {"model": "smollm2-test", "prompt": LONG_PROMPT, "max_tokens": 8, "stream": True}
        resp = await front.client.post("/v1/completions", data=json.dumps(body),
                                       headers={"Content-Type": "application/json"})
        events = [line for line in (await resp.text()).splitlines() if line.startswith("data: ")]
        error = json.loads(events[-2][6:])["error"]
        assert events[-1] == "data: [DONE]"
        assert isinstance(error["code"], str) and error["type"] == "invalid_request_error"
