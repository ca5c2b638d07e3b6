"""Prompts with tools: SmolLM2's template renders none, so the Hermes fallback writes them; a template that
renders `tools=` gets them, and the history, as Hugging Face documents it."""

from __future__ import annotations

import shutil

import pytest

from genie.serving.protocol import ChatMessage
from genie.serving.tokenizer import Tokenizer
from genie.serving.tools import Message, ToolCall, parse_output, parse_tools

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": CITY}}
TOOLS = parse_tools({"tools": [WEATHER]})
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
TURNS = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather in Paris and Rome?"),
    Message("assistant", None, (CALL, ToolCall("call_2", "get_weather", '{"city": "Rome"}'))),
    Message("tool", "18C, sunny", tool_call_id="call_1"),
    Message("tool", "21C, cloudy", tool_call_id="call_2"),
)
NATIVE = ("{%- if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}|{% endif %}"
          "{%- for m in messages %}<{{ m.role }}>{{ m.content }}"
          "{%- for c in m.tool_calls or [] %}"
          "[call {{ c.function.name }} {{ c.function.arguments | tojson }}]{% endfor %}"
          "{%- if m.tool_call_id %}(for {{ m.tool_call_id }}){% endif %}|{% endfor %}"
          "{%- if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir) -> Tokenizer:
    return Tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def native(smollm2_dir, tmp_path_factory) -> Tokenizer:
    """SmolLM2's tokenizer with a small chat template that renders tools and tool-call history."""
    out = tmp_path_factory.mktemp("native-tools")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, out / name)
    (out / "chat_template.jinja").write_text(NATIVE)
    return Tokenizer(out)


def test_smollm2_template_does_not_render_tools(smollm2):
    assert smollm2.renders_tools is False


def test_fallback_lists_the_tools_after_the_system_text(smollm2):
    text = smollm2.render_chat(TURNS[:2], TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert ('<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "The weather in a '
            'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>') in text
    assert "<tool_call></tool_call> XML tags" in text
    assert text.endswith("<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\n")


def test_fallback_round_trip_renders_calls_and_results(smollm2):
    text = smollm2.render_chat(TURNS, TOOLS)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>') in text
    assert ("<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response>\n<tool_response>\n21C, cloudy\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n") in text
    assert smollm2.encode_chat(TURNS, TOOLS) == smollm2.encode(text)
    assert smollm2.render_chat(TURNS, TOOLS) == text  # deterministic


def test_the_calls_the_fallback_writes_are_the_ones_parse_output_reads(smollm2):
    text = smollm2.render_chat(TURNS[:3], TOOLS)
    answer = text.split("<|im_start|>assistant\n")[-2].removesuffix("<|im_end|>\n")
    _, calls = parse_output(answer, TOOLS, new_id=iter(["call_1", "call_2"]).__next__)
    assert calls == list(TURNS[2].tool_calls)


def test_fallback_without_tools_or_with_choice_none(smollm2):
    plain = (ChatMessage("user", "Hi"),)
    choice_none = parse_tools({"tools": [WEATHER], "tool_choice": "none"})
    assert smollm2.render_chat(plain) == smollm2.render_chat(plain, choice_none)
    assert "# Tools" not in smollm2.render_chat(TURNS[1:])  # history alone: calls shown, no tool list
    assert "<tool_response>\n18C, sunny" in smollm2.render_chat(TURNS[1:])
    assert smollm2.render_chat(plain).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert smollm2.render_chat(plain, TOOLS).startswith("<|im_start|>system\n# Tools\n")


def test_a_template_that_renders_tools_gets_them_natively(native):
    assert native.renders_tools is True
    text = native.render_chat(TURNS, TOOLS)
    assert text == ("TOOLS:get_weather;|<system>Be brief.|<user>Weather in Paris and Rome?|"
                    '<assistant>[call get_weather {"city": "Paris"}][call get_weather {"city": "Rome"}]|'
                    "<tool>18C, sunny(for call_1)|<tool>21C, cloudy(for call_2)|<assistant>")
    assert native.render_chat(TURNS[:2]).startswith("<system>")


def test_plain_chats_render_as_the_template_alone_renders_them(smollm2):
    turns = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi!"), ChatMessage("assistant", "Hello."))
    alone = smollm2._tok.apply_chat_template([{"role": m.role, "content": m.content} for m in turns],
                                             add_generation_prompt=True, tokenize=False)
    assert smollm2.render_chat(turns) == alone


def test_fallback_keeps_assistant_text_before_its_calls(smollm2):
    text = smollm2.render_chat((ChatMessage("user", "Hi"), Message("assistant", "Checking.", (CALL,))), TOOLS)
    assert '<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "get_weather"' in text
