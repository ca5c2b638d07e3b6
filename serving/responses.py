"""OpenAI response bodies: chat and text completions, whole or as stream chunks, and errors."""

from __future__ import annotations

import time
from typing import Any

from .router import Delta, Submission
from .tokenizer import Tokenizer


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


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
                    "top_logprobs": [{"token": tokenizer.decode([t]), "logprob": lp} for t, lp in result.top],
                }
            )
    return items


class ChatFormat:
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.tokenizer = tokenizer
        self.created = int(time.time())

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, deltas: list[Delta], sub: Submission) -> dict[str, Any]:
        logprobs = _token_logprobs(deltas, self.tokenizer)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": deltas[-1].finish_reason if deltas else None,
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

    def usage_chunk(self, sub: Submission) -> dict[str, Any]:
        return self._head(self.object_chunk) | {"choices": [], "usage": usage(sub)}


class CompletionFormat(ChatFormat):
    object_whole = "text_completion"
    object_chunk = "text_completion"

    def __init__(self, request_id: str, model: str, tokenizer: Tokenizer) -> None:
        super().__init__(request_id, model, tokenizer)
        self.id = f"cmpl-{request_id}"

    def _logprobs(self, deltas: list[Delta]) -> dict[str, Any] | None:
        items = _token_logprobs(deltas, self.tokenizer)
        if not items:
            return None
        return {
            "tokens": [i["token"] for i in items],
            "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [{t["token"]: t["logprob"] for t in i["top_logprobs"]} for i in items],
            "text_offset": [],
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

    def chunk(self, delta: Delta) -> dict[str, Any]:
        choice = {"index": 0, "text": delta.text, "finish_reason": delta.finish_reason, "logprobs": self._logprobs([delta])}
        return self._head(self.object_chunk) | {"choices": [choice]}
