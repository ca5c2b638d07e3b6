"""The served model's tokenizer: chat template, encoding, EOS ids, and incremental detokenization.

Chat with tools: a template that renders `tools=` (Qwen 2.5, Llama 3.1, Hermes, ...) gets them and the tool-call
history as Hugging Face documents it; one that does not (SmolLM2's) gets `hermes_conversation`, the same
conversation written out as plain messages in the Hermes format that `tools.parse_output` reads back.

Streaming text must never emit half a UTF-8 character or part of a stop string, so `TextStream` decodes a
sliding window of ids (the vLLM offsets scheme) and holds back text that could still turn into a stop string.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from genie.errors import InvalidRequest

from .protocol import ChatMessage
from .tools import Choice, Message, ToolRequest

T = TypeVar("T")
AnyMessage = ChatMessage | Message
# A tool offered to the template once, to see whether it renders tools at all.
_PROBE_TOOL = {"type": "function", "function": {"name": "probe", "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
HERMES_TOOLS = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


class Tokenizer:
    """Wraps a Hugging Face fast tokenizer loaded from the model folder (no hub access)."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self._tok = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.eos_token_ids = frozenset(self._eos_ids())
        self._raw = _raw_decoder(self._tok)
        # One thread: a long prompt costs one core at most, and the HF tokenizer is never entered by two
        # threads with mutable state at once. The event loop only waits on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genie-tokenize")

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self._tok.eos_token_id is not None:
            ids.add(int(self._tok.eos_token_id))
        gen = self.model_dir / "generation_config.json"
        if gen.exists():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    @functools.cached_property
    def renders_tools(self) -> bool:
        """The chat template renders `tools=` (its text changes when a tool is offered)."""
        probe = [{"role": "user", "content": "Hi"}]
        try:
            return self._apply(probe, [_PROBE_TOOL]) != self._apply(probe, None)
        except Exception:  # a template may raise on what it does not know (jinja2 TemplateError and others)
            return False

    def _apply(self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self._tok.apply_chat_template(conversation, tools=tools, add_generation_prompt=True, tokenize=False)

    def render_chat(self, messages: Sequence[AnyMessage], tools: ToolRequest | None = None) -> str:
        """The prompt text; tools: the request's tools (none are shown with tool_choice "none")."""
        if not self.has_chat_template:
            raise InvalidRequest("this model has no chat template; use POST /v1/completions with a prompt")
        offered = [t.to_openai() for t in tools.tools] if tools and tools.choice is not Choice.NONE else []
        if self.renders_tools:
            return self._apply([native_message(m) for m in messages], offered or None)
        return self._apply(hermes_conversation(messages, offered), None)

    def encode_chat(self, messages: Sequence[AnyMessage], tools: ToolRequest | None = None) -> list[int]:
        return self._tok.encode(self.render_chat(messages, tools), add_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        if self._raw is not None:  # what transformers' decode calls in the end, without its 10 us of wrapping
            return self._raw.decode(ids, skip_special_tokens=True)
        return self._tok.decode(ids, skip_special_tokens=True)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Texts for an encoder, each with the model's special tokens ([CLS] ... [SEP] for BERT), untruncated."""
        return [list(ids) for ids in self._tok(list(texts), add_special_tokens=True)["input_ids"]]

    @property
    def pad_token_id(self) -> int:
        pad = self._tok.pad_token_id
        return int(pad) if pad is not None else 0

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def token_bytes(self, token_id: int) -> list[int]:
        """The UTF-8 bytes one token stands for (OpenAI's logprobs `bytes`), a part of a character included;
        special tokens give []. Byte-level BPE (GPT-2, Llama 3, SmolLM2) maps its pieces back byte for byte;
        other tokenizers give the bytes of the token's decoded text."""
        if token_id in self._tok.all_special_ids:
            return []
        piece = self._tok.convert_ids_to_tokens(int(token_id))
        table = _byte_decoder() if _is_byte_level(self._tok) else None
        if table is not None and piece is not None and all(ch in table for ch in piece):
            return [table[ch] for ch in piece]
        return list(self.decode([int(token_id)]).encode("utf-8"))

    async def _off_loop(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def encode_async(self, text: str) -> list[int]:
        return await self._off_loop(self.encode, text)

    async def encode_chat_async(self, messages: Sequence[AnyMessage], tools: ToolRequest | None = None) -> list[int]:
        return await self._off_loop(self.encode_chat, messages, tools)

    async def encode_many_async(self, texts: list[str]) -> list[list[int]]:
        return await self._off_loop(self.encode_many, texts)

    async def decode_async(self, ids: list[int]) -> str:
        return await self._off_loop(self.decode, ids)


@dataclass(slots=True)
class TextStream:
    """Turns sampled ids into text pieces, cutting at the first stop string.

    `push(id)` returns the newly final text; `finish()` flushes what was held back. Like vLLM, stop strings
    count only once `min_tokens` tokens are out: text before that is handed out as it comes, and a stop string
    is looked for in what follows.
    """

    tokenizer: Tokenizer
    stop: tuple[str, ...] = ()
    prompt_tail: list[int] = field(default_factory=list)  # a few prompt ids give the decoder its context
    ids: list[int] = field(default_factory=list)
    text: str = ""  # all decoded text so far (stop string excluded once hit)
    emitted: int = 0  # characters of `text` already handed out
    stopped: bool = False
    min_tokens: int = 0  # output tokens before a stop string may end the text
    _prefix: int = 0
    _read: int = 0
    _pushed: int = 0  # output tokens so far
    _search_from: int = 0  # characters of `text` before this are never searched for stop strings

    def __post_init__(self) -> None:
        self.ids = list(self.prompt_tail)
        self._prefix = max(0, len(self.ids) - 6)
        self._read = len(self.ids)

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        self._pushed += 1
        prefix_text = self.tokenizer.decode(self.ids[self._prefix : self._read])
        new_text = self.tokenizer.decode(self.ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for more ids
        self.text += new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        stopping = bool(self.stop) and self._pushed >= self.min_tokens
        if not stopping:
            self._search_from = len(self.text)  # all of it goes out below, unsearched
        for s in self.stop if stopping else ():
            at = self.text.find(s, self._search_from)
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
        hold = 0 if (final or self.stopped or not stopping) else max(len(s) for s in self.stop) - 1
        end = max(self.emitted, len(self.text) - hold)
        piece = self.text[self.emitted : end]
        self.emitted = end
        return piece

    def finish(self) -> str:
        return self._release(final=True)


def native_message(message: AnyMessage) -> dict[str, Any]:
    """A message as HF chat templates take it: tool_calls with arguments as an object, tool_call_id on results."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    calls = getattr(message, "tool_calls", ())  # protocol.ChatMessage has no tool fields
    if calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]
    if getattr(message, "tool_call_id", None):
        out["tool_call_id"] = message.tool_call_id
    return out


def hermes_conversation(messages: Sequence[AnyMessage], offered: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Plain {role, content} messages for a template without tools: the tools as JSON lines in the system
    message (after the client's own system text), calls as <tool_call> blocks in the assistant's text, and
    results as <tool_response> blocks in a user message (consecutive results share one)."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        text = _hermes_text(message)
        if message.role == "tool" and i > 0 and messages[i - 1].role == "tool":
            out[-1]["content"] += "\n" + text
        else:
            out.append({"role": "user" if message.role == "tool" else message.role, "content": text})
    if offered:
        listed = HERMES_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in offered))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + listed}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out


def _hermes_text(message: AnyMessage) -> str:
    if message.role == "tool":
        return f"<tool_response>\n{message.content}\n</tool_response>"
    calls = "".join(
        "\n<tool_call>\n" + json.dumps({"name": c.name, "arguments": json.loads(c.arguments)}, ensure_ascii=False)
        + "\n</tool_call>" for c in getattr(message, "tool_calls", ()))
    return ((message.content or "") + calls).lstrip("\n") if calls else (message.content or "")


def _raw_decoder(tok: Any) -> Any:
    """The Rust tokenizer behind a fast HF tokenizer when decoding through it gives the same text as
    `tok.decode` (no clean-up of tokenization spaces, which only the Python wrapper does); else None. Streaming
    decodes twice per token, and the wrapper costs four times the decode itself (3 us against 14 us)."""
    raw = getattr(tok, "_tokenizer", None)
    if raw is None or not hasattr(raw, "decode") or getattr(tok, "clean_up_tokenization_spaces", True):
        return None
    return raw


def _is_byte_level(tok: object) -> bool:
    backend = getattr(tok, "backend_tokenizer", None)
    return backend is not None and type(backend.decoder).__name__ == "ByteLevel"


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable character that stands for each byte -> the byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}
