"""What every HTTP request passes before a handler sees it: the API key, and a bounded, well-formed JSON body.

Errors are raised as `GenieError`s carrying their own status; `errors_middleware` is the one place they
become OpenAI-shaped responses. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from genie.auth import KeySet
from genie.errors import GenieError, InvalidRequest

from .responses import error_body, error_of, error_type

log = logging.getLogger("genie.serve")

OPERATOR_PATHS = frozenset({"/health/live", "/health/ready", "/health", "/metrics",  # key only if protect_metrics
                            "/v2/health/live", "/v2/health/ready"})
OPEN_PATHS = frozenset({"/openapi.json"})  # the spec says nothing secret
_THREAD_PARSE_BYTES = 64 << 10  # bodies larger than this are parsed off the event loop


class Unauthenticated(GenieError):
    """No API key, or one this server does not know."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PayloadTooLarge(GenieError):
    http_status = 413
    grpc_code = "INVALID_ARGUMENT"  # not RESOURCE_EXHAUSTED: a retry of the same message cannot succeed


class UnsupportedMediaType(GenieError):
    http_status = 415
    grpc_code = "INVALID_ARGUMENT"


MISSING_KEY = "this server needs an API key: send 'Authorization: Bearer YOUR_KEY'"
WRONG_KEY = "the API key is not valid for this server; check the key you sent in 'Authorization: Bearer ...'"


def connection_options(header_timeout_s: float) -> dict[str, Any]:
    """aiohttp request-handler settings, set on the app itself so that every runner serving it uses them."""
    return {
        # aiohttp arms this timer when a connection opens and resets it only after a response, so a client
        # that has not sent a whole request head in time is cut off (slow headers, slowloris); between
        # keep-alive requests it bounds idle time the same way. A running handler is never cut.
        "keepalive_timeout": header_timeout_s,
        # Compressed bodies are refused with 415 below; never inflate them (no decompression bombs, and no
        # parser error that drops the connection after the answer).
        "auto_decompress": False,
    }


def check_key(keys: KeySet, header: str | None) -> None:
    """Raises Unauthenticated unless the Authorization header carries a known key (any key when none is set)."""
    if keys.accepts_header(header):
        return
    raise Unauthenticated(MISSING_KEY if not header else WRONG_KEY)


def needs_key(path: str, protect_metrics: bool) -> bool:
    if path in OPEN_PATHS:
        return False
    return protect_metrics or path not in OPERATOR_PATHS


def error_kind(status: int) -> str:
    """OpenAI's error `type` for an HTTP status (responses.error_type)."""
    return error_type(status)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(message, error_kind(status), status), status=status, headers=headers)


def _headers_for(status: int) -> dict[str, str] | None:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 429:
        return {"Retry-After": "1"}
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place exceptions become responses: GenieError by its http_status, anything else 500."""
    try:
        return await handler(request)
    except GenieError as exc:
        return web.json_response(error_of(exc), status=exc.http_status, headers=_headers_for(exc.http_status))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(f"{exc.reason}: {request.method} {request.path}", exc.status, _headers_for(exc.status))
    except Exception:
        log.exception("unexpected error while serving %s %s", request.method, request.path)
        return error_response("internal server error; the server log has the details", 500)


def auth_middleware(keys: KeySet, protect_metrics: bool) -> Any:
    """Every route needs a key when keys are set, except the spec and (unless protect_metrics) health/metrics."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if keys and needs_key(request.path, protect_metrics):
            check_key(keys, request.headers.get("Authorization"))
        return await handler(request)

    return check


def _check_headers(request: web.Request, limit: int) -> None:
    if request.content_type != "application/json":
        given = request.headers.get("Content-Type")
        shown = f"Content-Type {given!r}" if given else "no Content-Type"
        raise UnsupportedMediaType(f"this endpoint takes 'Content-Type: application/json' bodies; the request has {shown}")
    charset = request.charset
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"the JSON body must be UTF-8; the request says charset={charset!r}")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed"
        )
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)


def _too_large(size: int | None, limit: int) -> PayloadTooLarge:
    got = f"{size} bytes" if size is not None else "more than that"
    return PayloadTooLarge(
        f"the request body is too large: at most {limit} bytes (serving.max_body_mib) are accepted, got {got}"
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; send a finite number")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from UTF-8 bytes: no NaN/Infinity; too-deep nesting is a user error, not a crash."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequest("the request body nests JSON too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


async def read_json(request: web.Request, limit: int) -> Any:
    """The body of a JSON endpoint, checked in order: media type, encoding, size, UTF-8, JSON."""
    _check_headers(request, limit)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(None, limit) from None
    if len(raw) > _THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)
