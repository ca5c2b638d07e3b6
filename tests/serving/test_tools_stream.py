"""ToolCallStream: whatever the split points, the deltas add up to parse_output on the whole text."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from genie.serving.tool_stream import ToolCallStream, assemble
from genie.serving.tools import parse_output, parse_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
AUTO = parse_tools({"tools": [WEATHER, TIME]})
REQUIRED = parse_tools({"tools": [WEATHER, TIME], "tool_choice": "required"})
NONE = parse_tools({"tools": [WEATHER, TIME], "tool_choice": "none"})

CALL = '{"name": "get_weather", "arguments": {"city": "Pa}ris \\"<tool_call>\\""}}'
AUTO_TEXTS = [
    "",
    "   ",
    "Paris is sunny.",
    f"Let me look.\n<tool_call>\n{CALL}\n</tool_call>\n",
    f'<tool_call>{CALL}</tool_call> and <tool_call>{{"name": "get_time", "arguments": {{}}}}</tool_call>',
    "a <tool_call>{bad json}</tool_call> b <tool_call>",
    "<tool_ca then < and <tool_callx> <tool_call>" + CALL + "</tool_call>  tail  ",
    f"<tool_call>{CALL}",  # never closed
    "x </tool_call> <tool_call></tool_call>",
]
GUIDED_TEXTS = [
    f'[{CALL}, {{"name":"get_time","arguments":{{}}}}]',
    f'  [ {CALL} ,\n {CALL} ]',
    f'[{CALL}, {{"name": "get_time", "argu',  # cut by max_tokens
    "not json at all",
    '[{"name": "nope", "arguments": {}}]',
    "",
]


def stream(text: str, cuts: list[int], request) -> list[dict]:
    s = ToolCallStream(request, new_id=_ids())
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    deltas = [d for a, b in itertools.pairwise(bounds) for d in s.push(text[a:b])]
    return deltas + s.finish()


def _ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter):024x}"


def _check(text: str, cuts: list[int], request) -> None:
    deltas = stream(text, cuts, request)
    content, calls = parse_output(text, request, new_id=_ids())
    assert assemble(deltas) == ((content or None), calls), (text, cuts)
    assert all(d for d in deltas) and all("content" not in d or d["content"] for d in deltas)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(AUTO_TEXTS), st.lists(st.integers(0, 10_000), max_size=12))
def test_auto_stream_adds_up_to_parse_output(text, cuts):
    _check(text, cuts, AUTO)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(GUIDED_TEXTS), st.lists(st.integers(0, 10_000), max_size=12))
def test_guided_stream_adds_up_to_parse_output(text, cuts):
    _check(text, cuts, REQUIRED)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="<>/_tolcax {}\"n:", max_size=60), st.lists(st.integers(0, 100), max_size=8))
def test_any_text_streams_consistently(text, cuts):
    _check(text, cuts, AUTO)
    _check(text, cuts, REQUIRED)


def test_plain_requests_stream_text_as_is():
    for request in (None, NONE):
        s = ToolCallStream(request)
        assert s.push(" <tool_call>") == [{"content": " <tool_call>"}] and s.push("") == [] and s.finish() == []


def test_openai_delta_shapes_and_finish_reason():
    s = ToolCallStream(AUTO, new_id=lambda: "call_" + "a" * 24)
    assert s.push("Hi <tool") == [{"content": "Hi"}]  # the space and "<tool" wait
    assert s.push('_call>{"name": "get_time", ') == []
    assert s.push('"arguments": {}}</tool_call>') == [
        {"tool_calls": [{"index": 0, "id": "call_" + "a" * 24, "type": "function",
                         "function": {"name": "get_time", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ]
    assert s.finish() == []
    assert s.finish_reason("stop") == "tool_calls" and s.finish_reason("length") == "length"


def test_guided_stream_sends_each_call_when_its_object_closes():
    s = ToolCallStream(REQUIRED)
    assert s.push('[{"name": "get_time", "arguments": {}') == []
    head, args = s.push("}, ")
    assert head["tool_calls"][0]["function"] == {"name": "get_time", "arguments": ""}
    assert args == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
    assert s.push("]") == [] and s.finish() == [] and len(s.tool_calls) == 1
