"""Streaming tool calls: text deltas in, OpenAI chat.completion.chunk `delta` dicts out.

Each call is sent whole once its JSON closes (the `</tool_call>` tag in auto mode, the call's object in the
guided array): first its header, `{"tool_calls": [{"index", "id", "type", "function": {"name",
"arguments": ""}}]}`, then one fragment with all its arguments, `{"tool_calls": [{"index", "function":
{"arguments"}}]}`. Sending the name earlier and the arguments as they are generated would need to commit to
a call before its JSON is known to be valid; whole calls keep the promise below without take-backs.

The promise: the content deltas concatenated, and the calls assembled from theirs, equal
`tools.parse_output` on the whole text (ids aside; pass one `new_id` to both to compare them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .tools import (OPEN, Choice, ToolCall, ToolRequest, array_calls, finish_reason, new_call_id, tagged_segments,
                    to_call)

Delta = dict[str, Any]


@dataclass(slots=True)
class ToolCallStream:
    """push(text) per generated piece, then finish(); each returns the deltas to send, maybe none."""

    request: ToolRequest | None
    new_id: Callable[[], str] = new_call_id
    tool_calls: list[ToolCall] = field(default_factory=list)  # the calls sent so far
    _text: str = ""  # every piece pushed
    _done: int = 0  # auto: characters of _text already sent (as content or calls)
    _space: str = ""  # whitespace held back: content is stripped at both ends, as parse_output strips it
    _started: bool = False  # some content was sent

    @property
    def plain(self) -> bool:
        return self.request is None or self.request.choice is Choice.NONE

    def push(self, text: str) -> list[Delta]:
        if self.plain:
            return [{"content": text}] if text else []
        self._text += text
        if self.request.guided:
            return self._guided() if "}" in text else []
        return self._tagged(final=False)

    def finish(self) -> list[Delta]:
        if self.plain:
            return []
        if self.request.guided:
            deltas = self._guided()
            if not self.tool_calls and self._text.strip():
                deltas.append({"content": self._text.strip()})  # not a call at all: show what came out
            return deltas
        return self._tagged(final=True)

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """The chunk's finish_reason: "tool_calls" when calls were sent and the answer ended by itself."""
        return finish_reason(engine_reason, self.tool_calls)

    def _guided(self) -> list[Delta]:
        deltas: list[Delta] = []
        for n, (call, _) in enumerate(array_calls(self._text, self.request)):
            if n >= len(self.tool_calls):
                deltas += self._call(to_call(call, self.new_id))
        return deltas

    def _tagged(self, final: bool) -> list[Delta]:
        rest = self._text[self._done:]
        deltas: list[Delta] = []
        for piece, call in tagged_segments(rest, self.request, final):
            self._done += len(piece)
            deltas += self._say(piece) if call is None else self._call(to_call(call, self.new_id))
        if not final:
            rest = self._text[self._done:]
            hold = rest.find(OPEN)
            safe = len(rest) - _partial_open(rest) if hold == -1 else hold
            self._done += safe
            deltas += self._say(rest[:safe])
        return deltas

    def _say(self, piece: str) -> list[Delta]:
        if not self._started:
            piece = piece.lstrip()
        piece = self._space + piece
        body = piece.rstrip()
        self._space = piece[len(body):]
        if not body:
            return []
        self._started = True
        return [{"content": body}]

    def _call(self, call: ToolCall) -> list[Delta]:
        index = len(self.tool_calls)
        self.tool_calls.append(call)
        head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        return [{"tool_calls": [head]}, {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]}]


def _partial_open(text: str) -> int:
    """Characters at the end of `text` that could be the start of <tool_call>."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


def assemble(deltas: list[Delta]) -> tuple[str | None, list[ToolCall]]:
    """What a client builds from the deltas: (content, calls). For tests and for a door that logs answers."""
    content = "".join(d["content"] for d in deltas if "content" in d)
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for part in delta.get("tool_calls", ()):
            call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = part.get("id", call["id"])
            call["name"] += part.get("function", {}).get("name", "")
            call["arguments"] += part.get("function", {}).get("arguments", "")
    ordered = [ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())]
    return (content or None), ordered
