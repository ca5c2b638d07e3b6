"""A minimal OpenAI-compatible server for testing genie-bench: streams fake tokens over real HTTP.

It runs in a background thread with its own event loop on 127.0.0.1, port 0. The per-token delay is the
stand-in's simulated generation time; it is what the benchmark measures, not a wait in product code.

Each request's text is `r{request number}t{token index} ...`, so a test can tell whose reply a later turn
carries. With `prefix_cache`, `GET /metrics` counts prompt words the way genie-serve counts prompt tokens:
every word looked up, and as hits the longest run of leading words shared with an earlier request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "standin-model"


@dataclass
class Behaviour:
    natural_tokens: int = 8  # tokens before the stand-in's "EOS", unless the request sets ignore_eos
    token_delay_s: float = 0.002
    first_token_delay_s: float = 0.01
    fail_every: int = 0  # 0: never; 1: every request answers 500; 2: every second request
    send_usage: bool = True
    stream_error_after: int | None = None  # send an error event after this many tokens
    prefix_cache: bool = False  # expose genie_prefix_cache_{hits,queries}_total at /metrics
    metrics_status: int = 200  # e.g. 401 for a /metrics behind a key


@dataclass
class StandIn:
    behaviour: Behaviour = field(default_factory=Behaviour)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)  # the text streamed for bodies[i] ("" if it failed)
    cache_hits: int = 0
    cache_queries: int = 0
    url: str = ""
    _counter: itertools.count = field(default_factory=itertools.count)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def start(self) -> StandIn:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stand-in server did not start within 10 s")
        return self

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        ready.set()
        self._loop.run_forever()

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_post("/v1/completions", self._generate)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.behaviour.metrics_status != 200:
            return web.Response(status=self.behaviour.metrics_status, text="key needed")
        lines = ["# HELP genie_requests_total Requests.", "# TYPE genie_requests_total counter",
                 f'genie_requests_total{{model="{MODEL}"}} {len(self.bodies)}.0']
        if self.behaviour.prefix_cache:
            lines += ["# TYPE genie_prefix_cache_hits_total counter",
                      f'genie_prefix_cache_hits_total{{worker="w0"}} {self.cache_hits}.0',
                      f"genie_prefix_cache_queries_total {self.cache_queries}.0"]
        return web.Response(text="\n".join(lines) + "\n")

    def _count_prefix(self, body: dict[str, Any]) -> None:
        words = _prompt_words(body)
        shared = max((_shared_prefix(words, _prompt_words(b)) for b in self.bodies), default=0)
        self.cache_hits += shared
        self.cache_queries += len(words)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._count_prefix(body)
        self.bodies.append(body)
        self.replies.append("")
        number = next(self._counter)
        b = self.behaviour
        if b.fail_every and number % b.fail_every == 0:
            error = {"message": f"stand-in failure on request {number}", "type": "server_error", "code": 500}
            return web.json_response({"error": error}, status=500)
        chat = request.path.endswith("/chat/completions")
        count = body["max_tokens"] if body.get("ignore_eos") else min(body["max_tokens"], b.natural_tokens)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._stream(response, chat, count, body, number)
        return response

    async def _stream(self, response: web.StreamResponse, chat: bool, count: int, body: dict, number: int) -> None:
        b = self.behaviour

        async def send(payload: dict) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        head = {"id": "cmpl-standin", "created": int(time.time()), "model": MODEL}
        if chat:
            await send(head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        await asyncio.sleep(b.first_token_delay_s)
        for i in range(count):
            if i:
                await asyncio.sleep(b.token_delay_s)
            if b.stream_error_after is not None and i == b.stream_error_after:
                await send({"error": {"message": "stand-in stream broke", "code": 500}})
                return
            finish = "length" if i == count - 1 else None
            text = f"r{number}t{i} "
            choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            await send(head | {"choices": [choice | {"finish_reason": finish}]})
            self.replies[number] += text
        if b.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 11, "completion_tokens": count, "total_tokens": 11 + count}
            await send(head | {"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")


def _prompt_words(body: dict[str, Any]) -> list[str]:
    if "messages" in body:
        return [word for m in body["messages"] for word in (m["role"], *m["content"].split())]
    return body["prompt"].split()


def _shared_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
