"""Tool calls in the chat response bodies: the whole message carries `tool_calls` and finish_reason
"tool_calls", and the streamed chunks carry the same calls in OpenAI's delta format (with the logprobs on the
first chunk of a step and the finish_reason on the last), for a guided answer split at every point."""

from __future__ import annotations

import json

import pytest

from genie.serving.responses import ChatFormat
from genie.serving.submission import Delta, Submission
from genie.serving.tools import parse_tools

TOOLS = {"tools": [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}},
], "tool_choice": "required"}
ANSWER = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]'


class Words:
    """Just enough of a tokenizer for bodies without logprobs."""

    def decode(self, ids: list[int]) -> str:
        return ""


def fmt() -> ChatFormat:
    return ChatFormat("req-1", "m", Words(), parse_tools(TOOLS))


def test_the_whole_message_holds_the_calls_and_finishes_with_tool_calls() -> None:
    body = fmt().whole(ANSWER, [Delta(text=ANSWER, finish_reason="stop")], Submission("req-1", 5))
    message, = [c["message"] for c in body["choices"]]
    assert message["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in message["tool_calls"])
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_an_answer_cut_off_by_max_tokens_keeps_finish_reason_length() -> None:
    cut = ANSWER[:40]
    body = fmt().whole(cut, [Delta(text=cut, finish_reason="length")], Submission("req-1", 5))
    assert body["choices"][0]["finish_reason"] == "length" and "tool_calls" not in body["choices"][0]["message"]


@pytest.mark.parametrize("split", range(1, len(ANSWER), 7))
def test_streamed_chunks_carry_the_same_calls(split: int) -> None:
    f = fmt()
    pieces = [Delta(text=ANSWER[:split]), Delta(text=ANSWER[split:], finish_reason="stop")]
    chunks = [c for d in pieces for c in f.chunks(d)]
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            entry["name"] += call.get("function", {}).get("name", "")
            entry["arguments"] += call.get("function", {}).get("arguments", "")
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
