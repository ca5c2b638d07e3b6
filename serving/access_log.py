"""One access log line per HTTP request: method, path, status, model, tokens, latency, request id.

Never the body, the query string or any header: those carry prompts and API keys. Handlers that know the
model and the token counts leave them on the request with `note`; the middleware writes the line once the
response is finished (for a stream, after its last event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .submission import Submission

log = logging.getLogger("genie.access")
NOTE = web.RequestKey("genie_access", "AccessNote")
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the response was done


@dataclass(slots=True)
class AccessNote:
    model: str
    submission: Submission | None = None  # a generation: prompt+completion tokens, and its request id
    tokens: int | None = None  # input tokens of a request that generates none (embeddings)


def note(request: web.Request, model: str, submission: Submission | None = None, tokens: int | None = None) -> None:
    """Names the model, and the generation or the token count, in this request's access log line."""
    request[NOTE] = AccessNote(model, submission, tokens)


def access_line(request: web.Request, status: int, seconds: float) -> str:
    """`POST /v1/completions 200 model=smollm2 tokens=9+400 12.345s id=req-…`; `-` where unknown."""
    noted = request.get(NOTE)
    model = _word(noted.model if noted else request.match_info.get("name", "-"))
    sub = noted.submission if noted else None
    counted = noted.tokens if noted and noted.tokens is not None else "-"
    tokens = f"{sub.prompt_tokens}+{sub.completion_tokens}" if sub else counted
    rid = sub.request_id if sub else "-"
    path = request.rel_url.raw_path  # still percent-encoded: a client cannot put a newline in the log
    return f"{_word(request.method)} {path} {status} model={model} tokens={tokens} {seconds:.3f}s id={rid}"


def _word(text: str) -> str:
    """`text` as one space-free, printable word: the line stays one line whatever a client sent."""
    return "".join(c if c.isprintable() and not c.isspace() else f"%{ord(c):02X}" for c in text) or "-"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Outermost, so the status is the one the client got, after the errors middleware mapped it."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info("%s", access_line(request, status, time.perf_counter() - started))
