"""The access log: one line per request from the door genie-serve starts (`start_http`), off by config; it never
holds a body or a key. In-process: real app, router and tokenizer over the fake worker."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from http_front import make_state
from test_grpc_front import MODEL

from genie.auth import KeySet
from genie.config import ServingConfig
from genie.serving.http_site import start_http
from genie.serving.tokenizer import Tokenizer

KEY = "sk-access-log-secret-0123"
PROMPT = "a prompt the log must never hold"


async def _requests(tokenizer: Tokenizer, serving: ServingConfig) -> None:
    state, _, router = make_state(tokenizer, api_keys=KeySet([KEY]))
    loop_task = asyncio.create_task(router.run())
    runner, url = await start_http(state, serving, 0)
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL.name, "prompt": PROMPT, "max_tokens": 3, "ignore_eos": True}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/completions", json=body, headers=auth) as resp:
                assert resp.status == 200
            async with session.post(f"{url}/v1/completions", json=body | {"stream": True}, headers=auth) as resp:
                assert resp.status == 200 and (await resp.read()).endswith(b"data: [DONE]\n\n")
            async with session.get(f"{url}/v1/models?api_key={KEY}") as resp:
                assert resp.status == 401
            async with session.get(f"{url}/v2/models/a%0Aforged%20line/ready", headers=auth) as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


async def test_one_line_per_request_with_model_tokens_and_latency(tokenizer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="genie.access")
    await _requests(tokenizer, ServingConfig())
    lines = [r.getMessage() for r in caplog.records if r.name == "genie.access"]
    assert len(lines) == 4, lines
    plain, streamed, refused, unknown = (line.split() for line in lines)
    for words in (plain, streamed):
        assert words[:5] == ["POST", "/v1/completions", "200", f"model={MODEL.name}", words[4]]
        prompt_tokens, completion_tokens = words[4].removeprefix("tokens=").split("+")
        assert int(prompt_tokens) > 0 and completion_tokens == "3"
        assert words[5].endswith("s") and float(words[5][:-1]) >= 0 and words[6].startswith("id=req-")
    assert plain[6] != streamed[6]
    assert refused[:5] == ["GET", "/v1/models", "401", "model=-", "tokens=-"]
    assert unknown[:4] == ["GET", "/v2/models/a%0Aforged%20line/ready", "404", "model=a%0Aforged%20line"]
    assert all(KEY not in line and "prompt" not in line and "?" not in line and "\n" not in line for line in lines)


async def test_access_log_false_writes_none(tokenizer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="genie.access")
    await _requests(tokenizer, ServingConfig(access_log=False))
    assert [r for r in caplog.records if r.name == "genie.access"] == []
