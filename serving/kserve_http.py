"""The KServe v2 / Open Inference Protocol HTTP door (`/v2/...`), with Triton's binary tensor data extension.

Handlers are thin: the wire format is `kserve_codec`, the model side `kserve_infer`. Errors in these routes
answer in the protocol's shape, `{"error": "<message>"}` (what tritonclient reads), with the status the error
type carries; the API key check in front of them stays the door's (and answers as the rest of the door does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import torch
from aiohttp import web

from genie import __version__
from genie.errors import GenieError

from .catalog import Entry, StatelessEntry
from .http_guard import PayloadTooLarge, UnsupportedMediaType
from .kserve_codec import encode_response, parse_infer
from .kserve_infer import (VERSION, check_inputs, check_outputs, find_entry, llm_metadata, model_metadata, run,
                           tensor_model)

HEADER_LENGTH = "Inference-Header-Content-Length"
_OFF_LOOP_BYTES = 64 << 10  # bodies larger than this are decoded and encoded off the event loop

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _v2_errors(handler: Handler) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except GenieError as exc:
            headers = {"Retry-After": "1"} if exc.http_status == 429 else None
            return web.json_response({"error": str(exc)}, status=exc.http_status, headers=headers)

    return answer


def _state(request: web.Request):
    from .http import STATE  # http imports this module; its AppKey is the one the app holds

    return request.app[STATE]


def _entry(request: web.Request) -> Entry:
    return find_entry(_state(request).catalog, request.match_info["name"], request.match_info.get("version"))


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "genie-serve", "version": __version__, "extensions": ["binary_tensor_data"]})


async def server_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    ready = all(e.service.ready for e in _state(request).catalog.entries.values())
    return web.json_response({"ready": ready}, status=200 if ready else 503)


@_v2_errors
async def metadata(request: web.Request) -> web.Response:
    entry = _entry(request)
    if not isinstance(entry, StatelessEntry):
        return web.json_response(llm_metadata(entry))
    return web.json_response(model_metadata(entry))


@_v2_errors
async def model_ready(request: web.Request) -> web.Response:
    entry = _entry(request)
    ready = entry.service.ready
    return web.json_response({"name": entry.name, "ready": ready}, status=200 if ready else 503)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, bounded by serving.max_body_mib; any media type (JSON, or JSON then binary tensors)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    too_large = f"the request body is too large: at most {limit} bytes (serving.max_body_mib) are accepted"
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"{too_large}, got {request.content_length} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"{too_large}, got more than that") from None


async def _off_loop_if_large(size: int, fn, *args):
    if size > _OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@_v2_errors
async def infer(request: web.Request) -> web.Response:
    entry = tensor_model(_entry(request))
    body = await _read_body(request, _state(request).max_body_bytes)
    req = await _off_loop_if_large(len(body), parse_infer, body, request.headers.get(HEADER_LENGTH))
    inputs = check_inputs(req, entry)
    wanted = check_outputs(req, entry)
    outputs = await run(entry, inputs, wanted, req.classes)
    header = {"model_name": entry.name, "model_version": VERSION} | ({"id": req.id} if req.id is not None else {})
    size = sum(o.value.numel() * o.value.element_size() if isinstance(o.value, torch.Tensor) else
               sum(map(len, o.value)) for o in outputs)
    payload, json_length = await _off_loop_if_large(size, encode_response, header, outputs, wanted)
    if json_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(body=payload, content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})


def add_kserve_routes(app: web.Application) -> None:
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", server_live)
    app.router.add_get("/v2/health/ready", server_ready)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(base, metadata)
        app.router.add_get(f"{base}/ready", model_ready)
        app.router.add_post(f"{base}/infer", infer)
