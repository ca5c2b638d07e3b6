"""API keys, TLS and the slow-header timeout at the HTTP door, in-process (real app, router and tokenizer over
the fake worker); `start_http` is the function genie-serve starts its door with."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import openai
import pytest
from http_front import HttpFront, http_front, make_state
from test_grpc_front import MODEL
from tls_certs import self_signed

from genie.auth import KeySet
from genie.config import ServingConfig
from genie.errors import ConfigError
from genie.serving.http import HttpState
from genie.serving.http_site import start_http
from genie.serving.tokenizer import Tokenizer

KEY = "sk-test-0123456789"
KEYS = KeySet([KEY, "sk-other-key"])
BODY = {"model": MODEL.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
GUARDED = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
           ("GET", "/v1/genie/workers"), ("GET", "/v2/models/x/infer"), ("GET", "/no/such/path")]
OPERATOR = ["/health/live", "/health/ready", "/metrics"]


@pytest.fixture
async def keyed(tokenizer: Tokenizer) -> HttpFront:
    async with http_front(tokenizer, api_keys=KEYS) as front:
        yield front


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(front: HttpFront, method: str, path: str, headers: dict[str, str] | None = None):
    data = json.dumps(BODY) if method == "POST" else None
    resp = await front.client.request(method, path, data=data,
                                      headers={"Content-Type": "application/json", **(headers or {})})
    return resp, await resp.read()


@pytest.mark.parametrize(("method", "path"), GUARDED)
@pytest.mark.parametrize("headers", [{}, bearer("sk-wrong"), {"Authorization": KEY}, {"Authorization": "Basic eDp5"},
                                     bearer("")], ids=["none", "wrong", "no-scheme", "basic", "empty"])
async def test_without_a_valid_key_every_api_path_is_401(keyed: HttpFront, method, path, headers) -> None:
    resp, raw = await call(keyed, method, path, headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert "Bearer" in error["message"] and "sk-" not in error["message"], "a key never appears in a reply"
    assert not keyed.worker.seen


@pytest.mark.parametrize("key", [KEY, "sk-other-key"])
async def test_a_known_key_works(keyed: HttpFront, key: str) -> None:
    resp, raw = await call(keyed, "POST", "/v1/chat/completions", bearer(key))
    assert resp.status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 2
    resp, _ = await call(keyed, "GET", "/v1/models", {"Authorization": f"bearer   {key}  "})
    assert resp.status == 200


async def test_401_comes_before_body_checks(keyed: HttpFront) -> None:
    resp = await keyed.client.post("/v1/completions", data=b"x" * 100, headers={"Content-Type": "text/plain"})
    assert resp.status == 401


@pytest.mark.parametrize("path", [*OPERATOR, "/openapi.json"])
async def test_health_metrics_and_spec_stay_open(keyed: HttpFront, path: str) -> None:
    resp, _ = await call(keyed, "GET", path)
    assert resp.status == 200


async def test_protect_metrics_closes_health_and_metrics_but_not_the_spec(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer, api_keys=KEYS, protect_metrics=True) as front:
        for path in OPERATOR:
            assert (await call(front, "GET", path))[0].status == 401
            assert (await call(front, "GET", path, bearer(KEY)))[0].status == 200
        assert (await call(front, "GET", "/openapi.json"))[0].status == 200


async def test_no_keys_means_open(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer) as front:
        assert (await call(front, "POST", "/v1/chat/completions"))[0].status == 200


async def test_the_openai_client_with_and_without_the_key(keyed: HttpFront) -> None:
    base = str(keyed.client.make_url("/v1"))
    good = openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0)
    reply = await good.chat.completions.create(model=MODEL.name, messages=BODY["messages"], max_tokens=2)
    assert reply.usage.completion_tokens == 2
    for key in ("sk-wrong", ""):  # "": the client's Authorization header is blanked (no key)
        bad = openai.AsyncOpenAI(base_url=base, api_key=key or "unused", max_retries=0,
                                 default_headers=None if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model=MODEL.name, messages=BODY["messages"], max_tokens=2)
        await bad.close()
    await good.close()


@asynccontextmanager
async def served(state: HttpState, serving: ServingConfig) -> AsyncIterator[str]:
    """The door as genie-serve starts it (`start_http`), with its router loop running; yields the base URL."""
    loop_task = asyncio.create_task(state.router.run())
    runner, url = await start_http(state, serving, 0)
    try:
        yield url
    finally:
        await runner.cleanup()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)


async def test_tls_serves_https_only(tokenizer: Tokenizer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state, _, _ = make_state(tokenizer, api_keys=KEYS)
    async with served(state, ServingConfig(tls_cert=str(cert), tls_key=str(key))) as url:
        assert url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/chat/completions", json=BODY, headers=bearer(KEY), ssl=trust) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(url.replace("https", "http") + "/health/live") as resp:
                    await resp.read()


async def test_a_key_that_is_not_the_certificates_is_a_config_error(tokenizer: Tokenizer, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    state, _, _ = make_state(tokenizer)
    with pytest.raises(ConfigError, match="the key must belong to the certificate"):
        await start_http(state, ServingConfig(tls_cert=str(cert), tls_key=str(other_key)), 0)


async def test_a_slow_request_head_is_cut_off_while_others_are_served(tokenizer: Tokenizer) -> None:
    state, _, _ = make_state(tokenizer)
    async with served(state, ServingConfig(header_timeout_s=1.0)) as url:
        port = int(url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /health/li")  # half a request line, then nothing
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                async with session.get(f"{url}/health/live") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.1)
        slow.setblocking(False)
        got = None
        while time.monotonic() - t0 < 3.0:
            try:
                got = slow.recv(1024)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        closed_after = time.monotonic() - t0
        assert got == b"", f"the server should close the connection without an answer, got {got!r}"
        assert closed_after < 1.0 + 0.5, f"closed after {closed_after:.2f}s"
        slow.close()


async def test_a_tls_handshake_that_never_finishes_is_cut_off(tokenizer: Tokenizer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    state, _, _ = make_state(tokenizer)
    serving = ServingConfig(tls_cert=str(cert), tls_key=str(key), header_timeout_s=1.0)
    async with served(state, serving) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - t0 < 1.0 + 0.5
        writer.close()
