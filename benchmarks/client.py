"""One streamed request to an OpenAI-compatible server, timed chunk by chunk.

`send_request` never raises for a failed request: every failure (HTTP status, error event in the stream,
dropped connection, timeout) becomes a `RequestRecord` with `error` set, so a run always finishes and counts.
`exchange` does the same and also returns the text the server generated, for conversations that go on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .options import Endpoint
from .prompts import Prompt


@dataclass(frozen=True, slots=True)
class RequestRecord:
    prompt_id: str
    start_s: float  # when it was sent, from the start of its run
    error: str | None = None
    ttft_s: float | None = None  # to the first chunk that carries text
    e2e_s: float | None = None
    itl_s: tuple[float, ...] = ()  # gaps between consecutive text chunks
    output_tokens: int = 0
    output_tokens_from: str = "usage"  # "usage", or "chunks" when the server sent no usage
    prompt_tokens: int = 0
    prompt_tokens_from: str = "usage"  # "usage", or "estimate" (word count) when the server sent no usage

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None when there is only one."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class StreamError(Exception):
    """The server reported an error, or answered in a shape this client cannot read."""


@dataclass(slots=True)
class _Timing:
    sent: float
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    usage: dict[str, Any] | None = None
    parts: list[str] = field(default_factory=list)  # the generated text, chunk by chunk

    def text_arrived(self, now: float, text: str) -> None:
        self.parts.append(text)
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)
        self.last = now
        self.chunks += 1


def request_body(endpoint: Endpoint, model: str, prompt: Prompt, max_tokens: int, temperature: float,
                 ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint is Endpoint.CHAT:
        body["messages"] = prompt.chat_messages()
    else:
        body["prompt"] = prompt.text()
    if ignore_eos:
        body["ignore_eos"] = True  # an extra field that vLLM, SGLang and genie-serve accept
    return body


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or delta.get("reasoning_content") or ""


def error_message(payload: Any, fallback: str) -> str:
    """The human part of an OpenAI-style (or FastAPI-, or plain-text) error body."""
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return str(err)[:300]
    return fallback[:300] or "no details given"


def _read_chunk(data: str, timing: _Timing) -> None:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise StreamError(f"the stream held a line that is not JSON: {data[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise StreamError(f"the stream held a JSON value that is not an object: {data[:80]!r}")
    if "error" in chunk:
        raise StreamError(f"error in stream: {error_message(chunk, data)}")
    if chunk.get("usage"):
        timing.usage = chunk["usage"]
    if text := _chunk_text(chunk):
        timing.text_arrived(time.perf_counter(), text)


async def _read_stream(response: aiohttp.ClientResponse, timing: _Timing) -> None:
    async for raw in response.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        _read_chunk(data, timing)


async def _read_whole(response: aiohttp.ClientResponse, timing: _Timing) -> None:
    """A server that ignored `stream: true` and sent one JSON body: TTFT is then the whole latency."""
    body = await response.json(content_type=None)
    if not isinstance(body, dict) or "error" in body:
        raise StreamError(error_message(body, str(body)))
    choice = (body.get("choices") or [{}])[0]
    text = choice.get("text") or (choice.get("message") or {}).get("content") or ""
    timing.usage = body.get("usage")
    if text:
        timing.text_arrived(time.perf_counter(), text)


async def _http_error(response: aiohttp.ClientResponse) -> str:
    text = (await response.text(errors="replace"))[:2000]
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        payload = None
    return f"HTTP {response.status}: {error_message(payload, text.strip() or response.reason or '')}"


def _record(prompt: Prompt, start_s: float, timing: _Timing, end: float) -> RequestRecord:
    if timing.first is None:
        return RequestRecord(prompt.id, start_s, error="the server answered without generating any text")
    usage = timing.usage or {}
    completion = usage.get("completion_tokens")
    prompt_tokens = usage.get("prompt_tokens")
    return RequestRecord(
        prompt_id=prompt.id,
        start_s=start_s,
        ttft_s=timing.first - timing.sent,
        e2e_s=end - timing.sent,
        itl_s=tuple(timing.gaps),
        output_tokens=completion if isinstance(completion, int) else timing.chunks,
        output_tokens_from="usage" if isinstance(completion, int) else "chunks",
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else prompt.approx_tokens,
        prompt_tokens_from="usage" if isinstance(prompt_tokens, int) else "estimate",
    )


def connect_reason(err: aiohttp.ClientConnectorError) -> str:
    if isinstance(err.os_error, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(err, aiohttp.ClientConnectorDNSError):
        return f"unknown host {err.host!r}"
    strerror = getattr(err.os_error, "strerror", None)
    return strerror or str(err)


def _describe(err: BaseException, timeout_s: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no complete answer within --timeout {timeout_s:g} s"
    if isinstance(err, aiohttp.ClientConnectorError):
        return f"cannot connect: {connect_reason(err)}"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before the answer was complete"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "the response was cut off before it was complete"
    return f"{type(err).__name__}: {err}"


async def exchange(session: aiohttp.ClientSession, url: str, body: dict[str, Any], prompt: Prompt,
                   run_start: float, timeout_s: float) -> tuple[RequestRecord, str]:
    """POST `body` to `url`, stream the answer and time it; returns the record and the generated text ("" when
    the request failed, which the record's `error` says)."""
    timing = _Timing(sent=time.perf_counter())
    start_s = timing.sent - run_start
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                return RequestRecord(prompt.id, start_s, error=await _http_error(response)), ""
            if response.content_type == "application/json":
                await _read_whole(response, timing)
            else:
                await _read_stream(response, timing)
    except StreamError as err:
        return RequestRecord(prompt.id, start_s, error=str(err)), ""
    except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeError) as err:
        return RequestRecord(prompt.id, start_s, error=_describe(err, timeout_s)), ""
    record = _record(prompt, start_s, timing, time.perf_counter())
    return record, "".join(timing.parts) if record.ok else ""


async def send_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any], prompt: Prompt,
                       run_start: float, timeout_s: float) -> RequestRecord:
    """POST `body` to `url`, stream the answer and time it; failures come back as records with `error`."""
    record, _ = await exchange(session, url, body, prompt, run_start, timeout_s)
    return record
