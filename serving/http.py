"""The OpenAI-compatible HTTP front door (aiohttp): thin handlers; keys, bodies and errors in `http_guard`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from genie.auth import KeySet
from genie.errors import GenieError, Unavailable

from .access_log import access_log_middleware, note
from .catalog import Catalog, LLMEntry
from .choices import chunk_bodies, chunk_body, first_chunks, whole_body
from .generation import ServedModel, build_generation, check_token_ids, encode_messages, encode_prompt
from .health import health_report, model_cards
from .http_embeddings import embeddings
from .http_guard import auth_middleware, connection_options, errors_middleware, read_json
from .kserve_http import add_kserve_routes
from .metrics import Metrics
from .openapi import openapi_spec
from .plans import list_plans
from .programs import add_program_routes
from .protocol import GenerationParams, parse_chat, parse_completion
from .responses import ChatFormat, CompletionFormat, error_body, error_of
from .router import Delta, Router, Submission
from .tokenizer import Tokenizer

STATE = web.AppKey("state", "HttpState")
DEFAULT_MAX_BODY_BYTES = 32 << 20  # what the door accepted before serving.max_body_mib existed


@dataclass(slots=True)
class HttpState:
    """What the front doors share. `catalog` holds every served model; router/tokenizer/model are the first
    LLM's (a one-model server can be built from those alone, and the catalog is made from them)."""

    router: Router | None = None
    tokenizer: Tokenizer | None = None
    model: ServedModel | None = None
    metrics: Metrics = field(default_factory=Metrics)
    api_keys: KeySet = field(default_factory=KeySet)  # empty: no key needed
    protect_metrics: bool = False  # health and /metrics need a key too (when keys are set)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # HTTP bodies and gRPC messages
    header_timeout_s: float = 10.0  # a connection must send a whole request head within this (serving.header_timeout_s)
    restarting: set[str] = field(default_factory=set)  # replicas the supervisor is bringing back (its own set)
    catalog: Catalog | None = None
    client_programs: bool = False  # genie.client programs are relayed to the workers (serving.client_programs)

    def __post_init__(self) -> None:
        if self.catalog is None:
            assert self.router is not None and self.tokenizer is not None and self.model is not None
            self.catalog = Catalog([LLMEntry(self.model, self.router, self.tokenizer, self.restarting)])
        elif self.router is None and self.catalog.llms:
            first = self.catalog.llms[0]
            self.router, self.tokenizer, self.model, self.restarting = (
                first.router, first.tokenizer, first.model, first.restarting)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_json(request, state.max_body_bytes)
    llm = state.catalog.llm(body)
    req = parse_chat(body, llm.name)
    prompt_ids = await encode_messages(llm.tokenizer, llm.model, req.messages, req.tools)
    sub = llm.router.submit(build_generation(llm.model, prompt_ids, req.params))
    fmt = ChatFormat(sub.request_id, req.model, llm.tokenizer, req.tools)
    return await _respond(request, llm.router, sub, req.params, fmt, "")


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_json(request, state.max_body_bytes)
    llm = state.catalog.llm(body)
    req = parse_completion(body, llm.name)
    if isinstance(req.prompt, str):
        prompt_ids, prefix = await encode_prompt(llm.tokenizer, llm.model, req.prompt), req.prompt
    else:
        prompt_ids = check_token_ids(llm.tokenizer, req.prompt)
        prefix = await llm.tokenizer.decode_async(prompt_ids) if req.echo else ""
    gen = build_generation(llm.model, prompt_ids, req.params)
    sub = llm.router.submit(gen)
    fmt = CompletionFormat(sub.request_id, req.model, llm.tokenizer)
    return await _respond(request, llm.router, sub, req.params, fmt, prefix if req.echo else "")


async def _respond(
    request: web.Request, router: Router, sub: Submission, params: GenerationParams, fmt: ChatFormat, prefix: str
) -> web.StreamResponse:
    note(request, fmt.model, sub)
    try:
        if params.stream:
            return await _stream(request, sub, params, fmt, prefix)
        deltas = [d async for d in sub.deltas()]
        failed = next((d for d in deltas if d.finish_reason == "error"), None)
        if failed is not None:
            raise failed.failure or Unavailable("generation failed")
        return web.json_response(whole_body(fmt, prefix, deltas, sub))
    finally:
        if not sub.done:  # the client went away (or writing failed): stop and free its KV
            router.abort(sub.request_id)


async def _stream(
    request: web.Request, sub: Submission, params: GenerationParams, fmt: ChatFormat, prefix: str
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    events = _Events(resp)
    for first in first_chunks(fmt, sub.choices):
        events.add(first)
    for index in range(sub.choices) if prefix else ():
        events.add(chunk_body(fmt, Delta(text=prefix, index=index)))
    await events.flush()
    async for delta in sub.deltas():
        if delta.finish_reason == "error":
            events.add(error_of(delta.failure or Unavailable("generation failed")))
            break
        for body in chunk_bodies(fmt, delta):
            events.add(body)
        if delta.finish_reason == "abort" and delta.error:  # cut off by the server (the drain), not the client
            events.add(error_body(delta.error, "server_error", 503))
        if not sub.done:  # the last delta's events go out with the usage and [DONE], in one write
            await events.flush()
    if params.include_usage:
        events.add(fmt.usage_chunk(sub))
    events.done()
    await events.flush()
    await resp.write_eof()
    return resp


class _Events:
    """Server-sent events gathered and written together: one write (one chunk of the HTTP body) per delta."""

    __slots__ = ("_resp", "_parts")

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self._parts: list[bytes] = []

    def add(self, payload: dict[str, Any]) -> None:
        self._parts.append(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def done(self) -> None:
        self._parts.append(b"data: [DONE]\n\n")

    async def flush(self) -> None:
        if self._parts:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts.clear()
            await self._resp.write(data)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": model_cards(request.app[STATE].catalog)})


async def openapi(request: web.Request) -> web.Response:
    state = request.app[STATE]
    embedders = [(e.name, e.max_tokens) for e in state.catalog.entries.values() if e.kind == "embedding"]
    vocab = state.tokenizer.vocab_size if state.tokenizer is not None else 0
    return web.json_response(openapi_spec(state.model, vocab, embedders))


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def ready(request: web.Request) -> web.Response:
    services = [e.service for e in request.app[STATE].catalog.entries.values()]
    if all(s.ready for s in services):
        return web.json_response({"status": "ready"})
    reasons = [r for s in services for r in s.not_ready_reasons()]
    return web.json_response({"status": "not ready", "reasons": reasons}, status=503)


async def health(request: web.Request) -> web.Response:
    report = health_report(request.app[STATE].catalog)
    return web.json_response(report, status=200 if report["status"] == "ready" else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def worker_stats(request: web.Request) -> web.Response:
    """Each worker's Step traffic and KV use, read from the worker itself (its Stats RPC).

    Bytes are serialized Step messages on the router-worker link since the worker started; a worker that does
    not answer is listed with `error` instead of numbers.
    """
    entries = request.app[STATE].catalog.entries.values()
    stages = {stage.worker: stage for e in entries for r in e.service.replicas.values() for stage in r.stages}

    async def one(name: str) -> dict[str, Any]:
        client = stages[name].client
        entry: dict[str, Any] = {"name": name, "address": client.address}
        try:
            stats = await client.stats(timeout=5.0)
        except GenieError as exc:
            return entry | {"error": str(exc)}
        return entry | {
            "steps": stats.steps, "tokens": stats.tokens,
            "bytes_received": stats.bytes_received, "bytes_sent": stats.bytes_sent,
            "fragments": [asdict(f) for f in stats.fragments],
        }

    workers = await asyncio.gather(*(one(name) for name in sorted(stages)))
    return web.json_response({"object": "list", "data": workers})


def make_app(state: HttpState, header_timeout_s: float | None = None, access_log: bool = False) -> web.Application:
    """The door's routes; header_timeout_s overrides state.header_timeout_s (start_http passes the config's),
    and access_log adds one log line per request (genie.access; start_http passes serving.access_log)."""
    timeout = state.header_timeout_s if header_timeout_s is None else header_timeout_s
    middlewares = [errors_middleware, auth_middleware(state.api_keys, state.protect_metrics)]
    if access_log:
        middlewares.insert(0, access_log_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=state.max_body_bytes,
                          handler_args=connection_options(timeout))
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/genie/workers", worker_stats)
    app.router.add_get("/v1/genie/plans", list_plans)
    app.router.add_get("/openapi.json", openapi)
    add_kserve_routes(app)
    add_program_routes(app)
    return app
