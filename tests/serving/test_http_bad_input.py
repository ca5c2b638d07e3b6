"""Bad input at the HTTP door gets a 4xx that names the problem, never a 5xx, and never reaches a batch.

In-process: the real app, router and SmolLM2 tokenizer over a fake worker (tests/serving/http_front.py).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from http_front import HttpFront, http_front
from test_grpc_front import MODEL

from genie.serving.generation import CHARS_PER_TOKEN_BOUND
from genie.serving.tokenizer import Tokenizer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
PROMPT = {"model": MODEL.name, "prompt": "Hello"}
MESSAGES = [{"role": "user", "content": "Hi"}]

# (body fields added to a valid request, status, words the message must contain)
OUT_OF_RANGE = [
    ({"top_k": 2**31}, 400, "'top_k' must be between 0 and 2147483647"),
    ({"top_k": -1}, 400, "'top_k' must be between 0"),
    ({"max_tokens": 2**31}, 400, "'max_tokens' must be at most the model's context"),
    ({"max_tokens": 10**30}, 400, "'max_tokens'"),
    ({"max_tokens": 300}, 400, "exceeds the model's context of 256 tokens"),
    ({"seed": 2**63}, 400, "'seed' must be between"),
    ({"n": 17}, 400, "'n' must be between 1 and 16"),
    ({"temperature": -0.1}, 400, "'temperature' must be between 0 and 2"),
    ({"top_p": 1.5}, 400, "'top_p' must be in (0, 1]"),
    ({"frequency_penalty": 3}, 400, "'frequency_penalty' must be between -2 and 2"),
    ({"presence_penalty": -2.5}, 400, "'presence_penalty' must be between -2 and 2"),
    ({"repetition_penalty": 0}, 400, "'repetition_penalty' must be in (0, 2]"),
    ({"logit_bias": {"5": 101}}, 400, "'logit_bias' values must be between -100 and 100"),
    ({"logit_bias": {"hello": 1}}, 400, "'logit_bias' keys must be token ids"),
    ({"logit_bias": {"99999999": 1}}, 400, "'logit_bias' names token ids outside the vocabulary"),
    ({"min_tokens": -1}, 400, "'min_tokens' must be between 0"),
    ({"min_tokens": 3, "max_tokens": 2}, 400, "'min_tokens' (3) is more than max_tokens (2)"),
    ({"stop_token_ids": [-1]}, 400, "'stop_token_ids' must be a list of token ids"),
    ({"stop_token_ids": [99999999]}, 400, "'stop_token_ids' names token ids outside the vocabulary"),
    ({"frequency_penalty": "a lot"}, 400, "'frequency_penalty' must be a number"),
    ({"stop": ["x"] * 5}, 400, "'stop' takes at most 4"),
    ({"stream": "yes"}, 400, "'stream' must be a boolean"),
]
CHAT_ONLY = [
    ({"top_logprobs": 21}, 400, "'top_logprobs' must be between 0 and 20"),
    ({"top_logprobs": 21, "logprobs": True}, 400, "'top_logprobs' must be between 0 and 20"),
    ({"top_logprobs": -1, "logprobs": False}, 400, "'top_logprobs' must be between 0 and 20"),
    ({"logprobs": 3}, 400, "'logprobs' must be a boolean"),
    ({"max_completion_tokens": 0}, 400, "'max_completion_tokens' must be > 0"),
]
COMPLETION_ONLY = [
    ({"logprobs": 21}, 400, "'logprobs' must be between 0 and 20"),
    ({"logprobs": -1}, 400, "'logprobs' must be between 0 and 20"),
]


async def post(front: HttpFront, path: str, data: bytes | str, headers: dict[str, str] | None = None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    resp = await front.client.post(path, data=data, headers=headers)
    return resp.status, await resp.json()


async def still_serves(front: HttpFront) -> None:
    status, body = await post(front, CHAT, json.dumps(front.chat(max_tokens=2, ignore_eos=True)))
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def _ids(cases):
    return [json.dumps(fields)[:40] for fields, _, _ in cases]


@pytest.mark.parametrize(("fields", "status", "words"), OUT_OF_RANGE + CHAT_ONLY, ids=_ids(OUT_OF_RANGE + CHAT_ONLY))
async def test_chat_fields_out_of_range_are_400(front: HttpFront, fields, status, words) -> None:
    got, body = await post(front, CHAT, json.dumps(front.chat(**fields)))
    assert got == status and isinstance(body["error"]["code"], str), body
    assert words in body["error"]["message"]
    assert not front.worker.seen, "a refused request must never reach a worker"


@pytest.mark.parametrize(("fields", "status", "words"), OUT_OF_RANGE + COMPLETION_ONLY,
                         ids=_ids(OUT_OF_RANGE + COMPLETION_ONLY))
async def test_completion_fields_out_of_range_are_400(front: HttpFront, fields, status, words) -> None:
    got, body = await post(front, COMPLETIONS, json.dumps(PROMPT | fields))
    assert got == status, body
    assert words in body["error"]["message"]
    assert not front.worker.seen


def test_a_temperature_next_to_zero_is_greedy() -> None:
    """Found by the fuzzer: 3.8e-41 made logits / temperature overflow and failed the worker's whole step."""
    from genie.serving.protocol import parse_params

    for tiny in (3.839207795720273e-41, 5e-324, 9e-6):
        assert parse_params({"temperature": tiny}, chat=False).temperature == 0.0
    assert parse_params({"temperature": 1e-5}, chat=False).temperature == 1e-5


async def test_penalties_of_zero_are_accepted(front: HttpFront) -> None:
    status, _ = await post(front, CHAT, json.dumps(front.chat(max_tokens=1, frequency_penalty=0, presence_penalty=0.0)))
    assert status == 200


BAD_BODIES = [
    ("lone surrogate in content", '{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages[0].content", "lone surrogate"),
    ("lone surrogate in prompt", '{"model": "%s", "prompt": "\\udfff"}', "'prompt'", "lone surrogate"),
    ("lone surrogate in stop", '{"model": "%s", "prompt": "Hi", "stop": ["\\ud800"]}', "'stop'", "lone surrogate"),
    ("3000-deep nesting", '{"model": "%s", "prompt": ' + "[" * 3000 + "]" * 3000 + "}", "nests JSON too deeply", ""),
    ("deep nesting in a field", '{"model": "%s", "prompt": "Hi", "max_tokens": ' + "[" * 900 + "]" * 900 + "}",
     "'max_tokens' must be a positive integer", ""),
    ("NaN", '{"model": "%s", "prompt": "Hi", "temperature": NaN}', "NaN is not valid JSON", ""),
    ("Infinity", '{"model": "%s", "prompt": "Hi", "top_p": -Infinity}', "-Infinity is not valid JSON", ""),
    ("overflowing float", '{"model": "%s", "prompt": "Hi", "temperature": 1e400}',
     "'temperature' must be a finite number", ""),
    ("integer too large for a float", '{"model": "%s", "prompt": "Hi", "top_p": 1' + "0" * 400 + "}",
     "'top_p' must be a finite number", ""),
    ("huge integer literal", '{"model": "%s", "prompt": "Hi", "seed": ' + "9" * 5000 + "}", "not valid JSON", ""),
    ("not JSON", "{'model': 1}", "not valid JSON", ""),
    ("a JSON list", "[1, 2]", "must be a JSON object", ""),
    ("empty body", "", "not valid JSON", ""),
]


@pytest.mark.parametrize(("name", "body", "words", "more"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_malformed_bodies_are_400(front: HttpFront, name: str, body: str, words: str, more: str) -> None:
    path = CHAT if '"messages"' in body else COMPLETIONS
    status, reply = await post(front, path, body.replace("%s", MODEL.name))
    assert status == 400, reply
    assert words in reply["error"]["message"] and more in reply["error"]["message"]
    assert len(reply["error"]["message"]) < 400, "a bad value is quoted short"
    await still_serves(front)


async def test_non_utf8_body_is_400(front: HttpFront) -> None:
    body = json.dumps(PROMPT).encode().replace(b"Hello", b"Hel\xff\xfelo")
    status, reply = await post(front, COMPLETIONS, body)
    assert status == 400 and "not UTF-8" in reply["error"]["message"]
    utf16 = json.dumps(PROMPT).encode("utf-16")
    status, reply = await post(front, COMPLETIONS, utf16)
    assert status == 400 and "not UTF-8" in reply["error"]["message"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "bogus", "gzip, identity"])
async def test_content_encoding_is_415_and_never_inflated(front: HttpFront, encoding: str) -> None:
    status, reply = await post(front, COMPLETIONS, b"\x1f\x8b not really gzip", {"Content-Encoding": encoding})
    assert status == 415, reply
    assert "Content-Encoding" in reply["error"]["message"] and "uncompressed" in reply["error"]["message"]
    await still_serves(front)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          "application/jsonp", None])
async def test_only_json_bodies_are_taken(front: HttpFront, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await front.client.post(COMPLETIONS, data=json.dumps(PROMPT).encode(), headers=headers,
                                   skip_auto_headers=["Content-Type"])
    reply = await resp.json()
    assert resp.status == 415, reply
    assert "application/json" in reply["error"]["message"]
    assert (content_type or "no Content-Type") in reply["error"]["message"]


async def test_json_with_charset_utf8_is_fine_and_other_charsets_are_415(front: HttpFront) -> None:
    body = json.dumps(PROMPT | {"max_tokens": 1})
    assert (await post(front, COMPLETIONS, body, {"Content-Type": "application/json; charset=utf-8"}))[0] == 200
    status, reply = await post(front, COMPLETIONS, body, {"Content-Type": "application/json; charset=latin-1"})
    assert status == 415 and "UTF-8" in reply["error"]["message"]


async def test_body_over_the_limit_is_413_before_it_is_read(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer, max_body_bytes=1 << 20) as front:
        big = json.dumps(PROMPT | {"prompt": "x" * (2 << 20)})
        status, reply = await post(front, COMPLETIONS, big)
        assert status == 413 and "at most 1048576 bytes" in reply["error"]["message"]

        async def chunks():  # no Content-Length: aiohttp's own cap answers, with our message
            for _ in range(3):
                yield b" " * (512 << 10)
        resp = await front.client.post(COMPLETIONS, data=chunks(), headers={"Content-Type": "application/json"})
        assert resp.status == 413 and "serving.max_body_mib" in (await resp.json())["error"]["message"]
        await still_serves(front)


@pytest.mark.parametrize(("path", "field"), [(CHAT, "messages"), (COMPLETIONS, "prompt")])
async def test_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing(
    front: HttpFront, path: str, field: str
) -> None:
    text = "a" * (MODEL.max_context * CHARS_PER_TOKEN_BOUND + 1)
    body = front.chat(text) if field == "messages" else PROMPT | {"prompt": text}
    status, reply = await post(front, path, json.dumps(body))
    assert status == 400 and f"'{field}' has {len(text)} characters" in reply["error"]["message"]


async def live_latency_while(front: HttpFront, work) -> tuple[float, object]:
    """Runs `work` while polling /health/live every 10 ms; returns the worst live latency and work's result."""
    worst = 0.0
    done = asyncio.Event()

    async def probe_live() -> None:
        nonlocal worst
        while not done.is_set():
            t0 = time.perf_counter()
            assert (await front.client.get("/health/live")).status == 200
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe_live())
    await asyncio.sleep(0.05)
    try:
        return worst, await work
    finally:
        done.set()
        await prober


async def test_a_30_mb_prompt_is_refused_fast_and_live_keeps_answering(tokenizer: Tokenizer) -> None:
    """Over the config's default 8 MiB: 413 from Content-Length, unread. Under it: 400 from the character
    bound, before the tokenizer. Client and server share this event loop, so live's latency counts both."""
    cases = [(30, 413, "the request body is too large"), (7, 400, "characters, more than")]
    async with http_front(tokenizer, max_body_bytes=8 << 20) as front:
        for mb, status, words in cases:
            body = json.dumps(PROMPT | {"prompt": "lorem ipsum " * (mb * 1_000_000 // 12)})
            t0 = time.perf_counter()
            worst, (got, reply) = await live_latency_while(front, post(front, COMPLETIONS, body))
            elapsed = time.perf_counter() - t0
            assert got == status and words in reply["error"]["message"], reply
            assert elapsed < 1.0, f"{mb} MB refused after {elapsed:.2f}s"
            assert worst < 0.1, f"/health/live took {worst * 1000:.0f} ms while the {mb} MB body was handled"


async def test_tokenizing_runs_off_the_event_loop(front: HttpFront, tokenizer: Tokenizer) -> None:
    """A prompt just under the character bound takes the tokenizer a while; live answers meanwhile."""
    words = " ".join(f"w{i}" for i in range(MODEL.max_prompt_chars // 6))
    body = json.dumps(PROMPT | {"prompt": words[: MODEL.max_prompt_chars]})
    worst, (status, reply) = await live_latency_while(front, post(front, COMPLETIONS, body))
    assert status == 400 and "tokens but the model's context is" in reply["error"]["message"]
    assert worst < 0.1


async def test_token_id_prompts_outside_the_vocabulary_are_400(front: HttpFront, tokenizer: Tokenizer) -> None:
    for ids in ([tokenizer.vocab_size], [-1], [1, 2**40]):
        status, reply = await post(front, COMPLETIONS, json.dumps(PROMPT | {"prompt": ids}))
        assert status == 400 and "outside the vocabulary" in reply["error"]["message"]
