"""OpenAI tool calling: the request's tools, tool-call history, the guide that forces a call, and the calls
read back out of the generated text.

Two output formats, one per mode:
- auto: the model writes free text with Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  blocks (the format the fallback prompt, `tokenizer.hermes_conversation`, asks for); a block that is not a valid call
  of a listed function stays in the content.
- required / a named function: the worker is guided by `guide_for`'s JSON schema, so the whole text is a JSON
  array of `{"name", "arguments"}` objects (exactly one when parallel_tool_calls is false).

Both are read by one scanner per format (`tagged_segments`, `array_calls`), used whole by `parse_output`
and piece by piece by `serving/tool_stream.py`, so a stream always adds up to the non-streamed answer.
This module imports nothing from the door: protocol.py may import it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from genie.errors import InvalidRequest

from .quoting import show

MAX_TOOLS = 128  # OpenAI's limit on `tools`
MAX_PARALLEL_CALLS = 8  # calls one guided answer may hold, so a looping model stops within its budget
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # fullmatch: "$" would let a trailing newline through
OPEN, CLOSE = "<tool_call>", "</tool_call>"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class Choice(StrEnum):
    AUTO = "auto"  # the model decides; calls are read from <tool_call> blocks
    NONE = "none"  # no calls: the text is all content
    REQUIRED = "required"  # at least one call, guided
    NAMED = "named"  # a call of `ToolRequest.named`, guided


@dataclass(frozen=True, slots=True)
class ToolFunction:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_PARAMETERS), hash=False)  # JSON schema
    strict: bool | None = None

    def to_openai(self) -> dict[str, Any]:
        """The tool as OpenAI (and HF chat templates' `tools=`) spell it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolRequest:
    tools: tuple[ToolFunction, ...]
    choice: Choice
    named: str | None = None  # the function a NAMED choice forces
    parallel: bool = True  # parallel_tool_calls: more than one call per answer

    @property
    def guided(self) -> bool:
        return self.choice in (Choice.REQUIRED, Choice.NAMED)

    def allowed(self) -> tuple[ToolFunction, ...]:
        """The functions an answer may call."""
        if self.choice is Choice.NONE:
            return ()
        return tuple(t for t in self.tools if self.named in (None, t.name))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str  # call_<24 hex>
    name: str
    arguments: str  # a JSON object as text, OpenAI's shape

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message with OpenAI's tool fields; protocol.ChatMessage is this without them.

    content is None only for an assistant message that holds tool_calls; tool_call_id is set on role "tool".
    """

    role: str
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def _fail(where: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"'{where}' {problem}", param=where)


def _utf8(value: Any, where: str) -> None:
    """Refuses a lone surrogate ("\\ud800" in JSON) anywhere in value: the tokenizer could not encode it."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(where, "holds a lone surrogate, which is not valid Unicode text; send UTF-8 text") from None


# ---- the request: tools, tool_choice, parallel_tool_calls


def parse_tools(body: dict[str, Any]) -> ToolRequest | None:
    """The request's tool fields, validated; None when it offers no tools (a plain chat request)."""
    _no_functions(body)
    tools = _tools(body.get("tools"))
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail("parallel_tool_calls", f"must be a boolean, got {show(parallel)}")
    choice, named = _tool_choice(body.get("tool_choice"), tools)
    if not tools:
        return None
    return ToolRequest(tools, choice, named, parallel is not False)


def _no_functions(body: dict[str, Any]) -> None:
    for key, neutral in (("functions", []), ("function_call", "none")):
        if body.get(key) not in (None, neutral):
            raise InvalidRequest(f"'{key}' is OpenAI's deprecated function calling, not supported here; send "
                                 "'tools' and 'tool_choice' instead", param=key, code="unsupported_parameter")


def _tools(value: Any) -> tuple[ToolFunction, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail("tools", 'must be a list of {"type": "function", "function": {...}}, got ' + show(value))
    if len(value) > MAX_TOOLS:
        raise _fail("tools", f"takes at most {MAX_TOOLS} tools, got {len(value)}")
    tools = tuple(_tool(item, f"tools[{i}]") for i, item in enumerate(value))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise _fail(f"tools[{i}].function.name", f"repeats the name {tool.name!r}; tool names must be unique")
        seen.add(tool.name)
    return tools


def _tool(item: Any, where: str) -> ToolFunction:
    if not isinstance(item, dict) or item.get("type") != "function":
        raise _fail(f"{where}.type", "must be \"function\" (the only tool type supported here)")
    function = item.get("function")
    if not isinstance(function, dict):
        raise _fail(f"{where}.function", "must be an object with 'name' (and optionally 'description', "
                    "'parameters', 'strict')")
    where = f"{where}.function"
    name = function.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail(f"{where}.name", f"must be 1 to 64 letters, digits, '_' or '-', got {show(name)}")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail(f"{where}.description", f"must be a string, got {show(description)}")
    parameters = function.get("parameters", EMPTY_PARAMETERS)
    if not isinstance(parameters, dict):
        raise _fail(f"{where}.parameters", f"must be a JSON schema object, got {show(parameters)}")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _fail(f"{where}.strict", f"must be a boolean, got {show(strict)}")
    _utf8(function, where)
    return ToolFunction(name, description, dict(parameters or EMPTY_PARAMETERS), strict)


def _tool_choice(value: Any, tools: tuple[ToolFunction, ...]) -> tuple[Choice, str | None]:
    if value is None:
        return (Choice.AUTO if tools else Choice.NONE), None
    if value == "none":  # asks for nothing, so it is taken without tools too
        return Choice.NONE, None
    if not tools:
        raise _fail("tool_choice", "needs 'tools': send the functions the model may call, or leave it out")
    if value in ("auto", "required"):
        return Choice(value), None
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise _fail("tool_choice", "must be \"auto\", \"none\", \"required\" or "
                    f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {show(value)}")
    if name not in {t.name for t in tools}:
        raise _fail("tool_choice.function.name", f"names {name!r}, which is not in 'tools'")
    return Choice.NAMED, name


# ---- history: assistant tool_calls and tool results


def parse_message(role: str, content: str | None, msg: dict[str, Any], index: int) -> Message:
    """A history message with its tool fields. The door reads role and content (None for a JSON null) as
    before; this reads `tool_calls` (assistant) and `tool_call_id` (tool)."""
    where = f"messages[{index}]"
    if msg.get("tool_calls") is not None and role != "assistant":
        raise _fail(f"{where}.tool_calls", f"is only allowed on assistant messages, not on {role!r}")
    calls = _history_calls(msg.get("tool_calls"), where)
    call_id = msg.get("tool_call_id") if role == "tool" else None
    if role == "tool" and (not isinstance(call_id, str) or not call_id):
        raise _fail(f"{where}.tool_call_id", "is required on a tool message: the id of the call it answers")
    _utf8(call_id, f"{where}.tool_call_id")
    if content is None and not calls:
        raise _fail(f"{where}.content", "must be a string (null only on an assistant message with tool_calls)")
    return Message(role, content, calls, call_id)


def _history_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail(f"{where}.tool_calls", f"must be a list of tool calls, got {show(value)}")
    return tuple(_history_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(value))


def _history_call(call: Any, where: str) -> ToolCall:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise _fail(where, "must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _fail(f"{where}.id", "must be a non-empty string")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _fail(f"{where}.function.name", "must be a string")
    arguments = function.get("arguments")
    if not isinstance(arguments, str) or not isinstance(_json_or_none(arguments), dict):
        raise _fail(f"{where}.function.arguments", f"must be a JSON object as a string, got {show(arguments)}")
    _utf8(call, where)
    _utf8(json.loads(arguments), f"{where}.function.arguments")  # "\\ud800" escapes come out as surrogates
    return ToolCall(call["id"], function["name"], arguments)


def check_history(messages: Sequence[Message]) -> None:
    """Every tool message answers a call of an earlier assistant message (OpenAI's rule)."""
    asked: set[str] = set()
    for i, message in enumerate(messages):
        asked.update(call.id for call in message.tool_calls)
        if message.role == "tool" and message.tool_call_id not in asked:
            raise _fail(f"messages[{i}].tool_call_id", f"is {message.tool_call_id!r}, which no earlier "
                        "assistant message's tool_calls holds")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# ---- the guide for required / named


def guide_for(request: ToolRequest | None) -> tuple[str, str] | None:
    """(guide_kind, guide_spec) for SamplingParams when a call is forced; None leaves the text free."""
    if request is None or not request.guided:
        return None
    calls = [_call_schema(t) for t in request.allowed()]
    schema = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
        "maxItems": MAX_PARALLEL_CALLS if request.parallel else 1,
    }
    return "json_schema", json.dumps(schema, ensure_ascii=False)


def _call_schema(tool: ToolFunction) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


# ---- reading calls out of the text


def finish_reason(engine_reason: str | None, tool_calls: Sequence[ToolCall]) -> str | None:
    """OpenAI's "tool_calls" when an answer that ended by itself made calls; "length" etc. stay."""
    return "tool_calls" if tool_calls and engine_reason == "stop" else engine_reason


def parse_output(text: str, request: ToolRequest | None,
                 new_id: Callable[[], str] = new_call_id) -> tuple[str | None, list[ToolCall]]:
    """The final text as (content, tool_calls). Never raises: what is not a valid call stays content."""
    if request is None or request.choice is Choice.NONE:
        return text, []
    if request.guided:
        calls = [to_call(c, new_id) for c, _ in array_calls(text, request)]
        return (None if calls else (text.strip() or None)), calls
    content, calls = [], []
    for piece, call in tagged_segments(text, request, final=True):
        if call is None:
            content.append(piece)
        else:
            calls.append(to_call(call, new_id))
    return ("".join(content).strip() or None), calls


def to_call(call: tuple[str, Any], new_id: Callable[[], str]) -> ToolCall:
    name, arguments = call
    return ToolCall(new_id(), name, json.dumps(arguments, ensure_ascii=False))


def read_call(value: Any, request: ToolRequest) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) when `value` is {"name": <a callable function>, "arguments": {...}}."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    if value["name"] not in {t.name for t in request.allowed()} or not isinstance(arguments, dict):
        return None
    return value["name"], arguments


def tagged_segments(text: str, request: ToolRequest,
                     final: bool) -> Iterator[tuple[str, tuple[str, dict[str, Any]] | None]]:
    """(text, None) for content and (block, call) for each closed <tool_call> block, in order. Without
    `final`, stops before an unclosed block (the caller holds it); with it, an unclosed block is content."""
    at = 0
    while (start := text.find(OPEN, at)) != -1:
        end = text.find(CLOSE, start + len(OPEN))
        if end == -1:
            break
        if start > at:
            yield text[at:start], None
        block = text[start:end + len(CLOSE)]
        call = read_call(_json_or_none(text[start + len(OPEN):end]), request)
        yield block, call
        at = end + len(CLOSE)
    if final and at < len(text):
        yield text[at:], None


def array_calls(text: str, request: ToolRequest) -> Iterator[tuple[tuple[str, dict[str, Any]], int]]:
    """(call, end offset) for each complete object of a top-level JSON array, as the guide writes it; an
    object that is not a valid call is skipped."""
    depth, in_string, escaped, start = 0, False, False, -1
    for i, ch in enumerate(text):
        if in_string:
            escaped, in_string = (not escaped and ch == "\\"), (in_string and (escaped or ch != '"'))
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            start = i if depth == 2 and ch == "{" else start
        elif ch in "]}":
            depth -= 1
            if depth == 1 and ch == "}" and start >= 0:
                call = read_call(_json_or_none(text[start:i + 1]), request)
                if call is not None:
                    yield call, i + 1
                start = -1
