"""OpenAI response bodies: chat and text completions, whole or as stream chunks, and errors."""

from __future__ import annotations

import itertools
import time
from typing import Any

from genie.errors import GenieError, status_code

from .router import Delta, Submission
from .tokenizer import Tokenizer
from .tool_stream import ToolCallStream
from .tools import ToolRequest, finish_reason, parse_output


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status: it sends invalid_request_error for every 4xx it answers
    (a bad key's 401 and an unknown model's 404 too), "requests" with a 429, server_error for a 5xx."""
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, kind: str, status: int, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object; code: a string, by default the one for the status (genie.errors.STATUS_CODES)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code or status_code(status)}}


def error_of(exc: GenieError) -> dict[str, Any]:
    """The error object for a GenieError: its message, its status's type, its param and code."""
    return error_body(str(exc), error_type(exc.http_status), exc.http_status, exc.param, exc.code)


def usage(sub: Submission) -> dict[str, int]:
    return {
        "prompt_tokens": sub.prompt_tokens,
        "completion_tokens": sub.completion_tokens,
        "total_tokens": sub.prompt_tokens + sub.completion_tokens,
    }


def _token_logprobs(deltas: list[Delta], tokenizer: Tokenizer) -> list[dict[str, Any]]:
    items = []
    for delta in deltas:
        for result in delta.logprobs:
            items.append(
                {
                    "token": tokenizer.decode([result.token_id]),
                    "logprob": result.logprob,
                    "bytes": tokenizer.token_bytes(result.token_id),
                    "top_logprobs": [{"token": tokenizer.decode([t]), "logprob": lp, "bytes": tokenizer.token_bytes(t)}
                                     for t, lp in result.top],
                }
            )
    return items


class ChatFormat:
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer, tools: ToolRequest | None = None) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.tokenizer = tokenizer
        self.created = int(time.time())
        self.tools = tools  # the request's tools: the text is parsed into tool_calls (serving/tools.py)
        self._tool_streams: dict[int, ToolCallStream] = {}  # choice -> its streaming parser

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, deltas: list[Delta], sub: Submission) -> dict[str, Any]:
        logprobs = _token_logprobs(deltas, self.tokenizer)
        content, calls = parse_output(text, self.tools)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [call.to_openai() for call in calls]
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(deltas[-1].finish_reason if deltas else None, calls),
            "logprobs": {"content": logprobs} if any(d.logprobs for d in deltas) else None,
        }
        return self._head(self.object_whole) | {"choices": [choice], "usage": usage(sub)}

    def first_chunk(self) -> dict[str, Any]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
        return self._head(self.object_chunk) | {"choices": [choice]}

    def chunk(self, delta: Delta) -> dict[str, Any]:
        body: dict[str, Any] = {"content": delta.text} if delta.text else {}
        logprobs = _token_logprobs([delta], self.tokenizer)
        choice = {
            "index": 0,
            "delta": body,
            "finish_reason": delta.finish_reason,
            "logprobs": {"content": logprobs} if logprobs else None,
        }
        return self._head(self.object_chunk) | {"choices": [choice]}

    def chunks(self, delta: Delta) -> list[dict[str, Any]]:
        """The chunks for one step's delta of one choice: one, or with tools as many as the parser has deltas
        for (none while it holds back text that may open a call); the step's logprobs ride on the first, the
        finish_reason on the last."""
        if self.tools is None:
            return [self.chunk(delta)]
        stream = self._tool_streams.setdefault(delta.index, ToolCallStream(self.tools))
        parts = stream.push(delta.text) if delta.text else []
        end = None
        if delta.finish_reason is not None:
            parts += stream.finish()
            end = stream.finish_reason(delta.finish_reason)
        logprobs = _token_logprobs([delta], self.tokenizer)
        if not parts and (end is not None or logprobs):
            parts = [{}]
        return [
            self._head(self.object_chunk) | {"choices": [{
                "index": 0,
                "delta": part,
                "finish_reason": end if i == len(parts) - 1 else None,
                "logprobs": {"content": logprobs} if logprobs and i == 0 else None,
            }]}
            for i, part in enumerate(parts)
        ]

    def usage_chunk(self, sub: Submission) -> dict[str, Any]:
        return self._head(self.object_chunk) | {"choices": [], "usage": usage(sub)}


class CompletionFormat(ChatFormat):
    object_whole = "text_completion"
    object_chunk = "text_completion"

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer) -> None:
        super().__init__(request_id, model, tokenizer)
        self.id = f"cmpl-{request_id}"
        self._offsets: dict[int, int] = {}  # choice -> characters of its text streamed so far

    def _logprobs(self, deltas: list[Delta], start: int = 0) -> dict[str, Any] | None:
        """start: where the first token's text begins in the choice's text (OpenAI's text_offset)."""
        items = _token_logprobs(deltas, self.tokenizer)
        if not items:
            return None
        offsets = list(itertools.accumulate((len(i["token"]) for i in items[:-1]), initial=start))
        return {
            "tokens": [i["token"] for i in items],
            "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [{t["token"]: t["logprob"] for t in i["top_logprobs"]} for i in items],
            "text_offset": offsets,
        }

    def whole(self, text: str, deltas: list[Delta], sub: Submission) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "finish_reason": deltas[-1].finish_reason if deltas else None,
            "logprobs": self._logprobs(deltas),
        }
        return self._head(self.object_whole) | {"choices": [choice], "usage": usage(sub)}

    def first_chunk(self) -> dict[str, Any] | None:
        return None

    def chunks(self, delta: Delta) -> list[dict[str, Any]]:
        return [self.chunk(delta)]

    def chunk(self, delta: Delta) -> dict[str, Any]:
        start = self._offsets.get(delta.index, 0)
        self._offsets[delta.index] = start + len(delta.text)
        logprobs = self._logprobs([delta], start)
        choice = {"index": 0, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": logprobs}
        return self._head(self.object_chunk) | {"choices": [choice]}
