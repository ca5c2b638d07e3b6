"""Tool calling without a server: the request's tool fields, history messages, the guide, and parse_output."""

from __future__ import annotations

import itertools
import json

import pytest

from genie.errors import InvalidRequest
from genie.serving.tools import (MAX_PARALLEL_CALLS, Choice, Message, ToolCall, check_history, finish_reason,
                                 guide_for, parse_message, parse_output, parse_tools)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def tools_body(**fields) -> dict:
    return {"tools": [WEATHER, TIME], **fields}


def ids():
    counter = itertools.count()
    return lambda: f"call_{next(counter):024x}"


# ---- parse_tools


def test_no_tools_is_a_plain_request():
    assert parse_tools({}) is None
    assert parse_tools({"tools": [], "tool_choice": "none"}) is None


def test_defaults_and_choices():
    req = parse_tools(tools_body())
    assert (req.choice, req.named, req.parallel) == (Choice.AUTO, None, True)
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]
    assert req.tools[1].parameters == {"type": "object", "properties": {}}
    assert parse_tools(tools_body(tool_choice="required", parallel_tool_calls=False)).parallel is False
    named = parse_tools(tools_body(tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert (named.choice, named.named, [t.name for t in named.allowed()]) == (Choice.NAMED, "get_time", ["get_time"])
    assert parse_tools(tools_body(tool_choice="none")).allowed() == ()


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"name": "x"}}, "tools"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x\n"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "x", "description": 3}}]},
     "tools[1].function.description"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": "{}"}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "x", "strict": "yes"}}]}, "tools[0].function.strict"),
    ({"tools": [WEATHER, TIME, WEATHER]}, "tools[2].function.name"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "x", "description": "\ud800"}}]}, "tools[0].function"),
    (tools_body(tool_choice="always"), "tool_choice"),
    (tools_body(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    (tools_body(parallel_tool_calls="yes"), "parallel_tool_calls"),
])
def test_bad_fields_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as err:
        parse_tools(body)
    assert err.value.param == param
    assert str(err.value).startswith(f"'{param}'")
    assert err.value.code == "invalid_value"


@pytest.mark.parametrize("key", ["functions", "function_call"])
def test_legacy_functions_are_refused(key):
    with pytest.raises(InvalidRequest, match="deprecated function calling.*'tools'") as err:
        parse_tools({key: [{"name": "f"}] if key == "functions" else "auto"})
    assert (err.value.param, err.value.code) == (key, "unsupported_parameter")
    assert parse_tools({"functions": [], "function_call": "none"}) is None


# ---- history


def test_history_messages_parse():
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assistant = parse_message("assistant", None, {"role": "assistant", "content": None, "tool_calls": [call]}, 1)
    assert assistant == Message("assistant", None, (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),))
    tool = parse_message("tool", "18C", {"role": "tool", "tool_call_id": "call_1", "content": "18C"}, 2)
    assert tool == Message("tool", "18C", tool_call_id="call_1")
    check_history([Message("user", "hi"), assistant, tool])


@pytest.mark.parametrize(("role", "content", "msg", "param"), [
    ("assistant", None, {}, "messages[3].content"),
    ("tool", "x", {}, "messages[3].tool_call_id"),
    ("user", "x", {"tool_calls": []}, "messages[3].tool_calls"),
    ("assistant", None, {"tool_calls": {"id": "x"}}, "messages[3].tool_calls"),
    ("assistant", None, {"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     "messages[3].tool_calls[0].id"),
    ("assistant", None, {"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]},
     "messages[3].tool_calls[0].function.name"),
    ("assistant", None, {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]},
     "messages[3].tool_calls[0].function.arguments"),
    ("assistant", None, {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{not json"}}]},
     "messages[3].tool_calls[0].function.arguments"),
    ("assistant", None, {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a": "\ud800"}'}}]},
     "messages[3].tool_calls[0]"),
    ("assistant", None, {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a": "\\ud800"}'}}]},
     "messages[3].tool_calls[0].function.arguments"),
    ("tool", "x", {"tool_call_id": "\udc00"}, "messages[3].tool_call_id"),
])
def test_bad_history_names_the_field(role, content, msg, param):
    with pytest.raises(InvalidRequest) as err:
        parse_message(role, content, msg, 3)
    assert err.value.param == param


def test_a_tool_result_must_answer_an_earlier_call():
    with pytest.raises(InvalidRequest, match="no earlier") as err:
        check_history([Message("user", "hi"), Message("tool", "18C", tool_call_id="call_9")])
    assert err.value.param == "messages[1].tool_call_id"


# ---- the guide


def test_no_guide_for_auto_none_or_no_tools():
    assert guide_for(None) is None
    assert guide_for(parse_tools(tools_body())) is None
    assert guide_for(parse_tools(tools_body(tool_choice="none"))) is None


def _validator(body: dict):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed in .venv (dev extra)")
    kind, spec = guide_for(parse_tools(body))
    assert kind == "json_schema"
    schema = json.loads(spec)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
NOW = {"name": "get_time", "arguments": {}}


def test_required_guide_accepts_calls_of_any_listed_function():
    v = _validator(tools_body(tool_choice="required"))
    for good in ([PARIS], [NOW], [PARIS, NOW, PARIS], [PARIS] * MAX_PARALLEL_CALLS):
        assert v.is_valid(good), good
    for bad in ([], PARIS, [PARIS] * (MAX_PARALLEL_CALLS + 1), [{"name": "other", "arguments": {}}],
                [{"name": "get_weather", "arguments": {}}], [{"name": "get_weather", "arguments": {"city": 3}}],
                [{"name": "get_weather"}], [{**PARIS, "extra": 1}], ["get_weather"]):
        assert not v.is_valid(bad), bad


def test_guide_without_parallel_calls_takes_exactly_one():
    v = _validator(tools_body(tool_choice="required", parallel_tool_calls=False))
    assert v.is_valid([NOW]) and not v.is_valid([NOW, NOW]) and not v.is_valid([])


def test_named_guide_takes_only_that_function():
    v = _validator(tools_body(tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert v.is_valid([PARIS]) and v.is_valid([PARIS, PARIS])
    assert not v.is_valid([NOW]) and not v.is_valid([PARIS, NOW])


# ---- parse_output


def test_guided_output_is_a_json_array_of_calls():
    req = parse_tools(tools_body(tool_choice="required"))
    content, calls = parse_output('[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                                  '{"name":"get_time","arguments":{}}]', req, ids())
    assert content is None
    assert [c.to_openai() for c in calls] == [
        {"id": "call_" + "0" * 24, "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_" + "0" * 23 + "1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert finish_reason("stop", calls) == "tool_calls" and finish_reason("length", calls) == "length"


def test_named_output_ignores_other_functions_and_cut_calls():
    req = parse_tools(tools_body(tool_choice={"type": "function", "function": {"name": "get_time"}}))
    content, calls = parse_output('[{"name": "get_weather", "arguments": {}}, {"name": "get_time", "arguments": '
                                  '{}}, {"name": "get_time", "argum', req)
    assert content is None and [c.name for c in calls] == ["get_time"]


@pytest.mark.parametrize("text", ["", "  ", "not json", '[{"name": "get_weather", "arguments": {"ci', "[1, 2]",
                                  '{"name": "get_time", "arguments": {}}', '[{"name": "get_time", "arguments": [1]}]'])
def test_guided_output_that_holds_no_call_is_content(text):
    content, calls = parse_output(text, parse_tools(tools_body(tool_choice="required")))
    assert calls == [] and content == (text.strip() or None)
    assert finish_reason("stop", calls) == "stop"


def test_call_ids_are_random_hex():
    text = "[" + ", ".join([json.dumps(NOW)] * 2) + "]"
    _, (a, b) = parse_output(text, parse_tools(tools_body(tool_choice="required")))
    for call in (a, b):
        assert call.id.startswith("call_") and len(call.id) == 29 and int(call.id[5:], 16) >= 0
    assert a.id != b.id


def test_auto_output_reads_tool_call_blocks_and_keeps_the_rest():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n')
    content, calls = parse_output(text, parse_tools(tools_body()), ids())
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]


@pytest.mark.parametrize("block", [
    "<tool_call>{not json}</tool_call>",
    '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
    '<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>',
    '<tool_call>["get_time"]</tool_call>',
    '<tool_call>{"name": "get_time", "arguments": {}}',  # never closed (cut by max_tokens)
])
def test_auto_output_keeps_what_is_not_a_call_as_content(block):
    text = f"Hi {block} there"
    assert parse_output(text, parse_tools(tools_body())) == (text, [])


def test_auto_output_without_calls_and_choice_none_are_plain_text():
    assert parse_output("  Paris.  ", parse_tools(tools_body())) == ("Paris.", [])
    assert parse_output("", parse_tools(tools_body())) == (None, [])
    block = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert parse_output(block, parse_tools(tools_body(tool_choice="none"))) == (block, [])
    assert parse_output(" x ", None) == (" x ", [])
