"""Tool calling through the real path: genie-serve with SmolLM2 on two worker processes and the real `openai`
client. With tool_choice "required" and two functions every answer, streamed or not, holds tool_calls whose
arguments validate against the called function's parameters; a named choice calls that function; and a full
round trip (the call, the tool's result, the final answer) is accepted."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": -999, "maximum": 999},
                                        "b": {"type": "integer", "minimum": -999, "maximum": 999}},
       "required": ["a", "b"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "The sum of two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
QUESTIONS = ["What is the weather in Paris?", "What is 12 plus 30?", "Is it raining in Oslo?", "Add 7 and 5.",
             "How warm is it in Rome, in fahrenheit?", "What is 100 plus 1?"]


@pytest.fixture(scope="module")
def server(serve_smollm2):
    return serve_smollm2()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def check_calls(calls: list[tuple[str, str]]) -> None:
    import jsonschema

    assert calls, "no tool call in the answer"
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


async def streamed(client, question: str) -> tuple[list[tuple[str, str]], str]:
    calls: dict[int, list[str]] = {}
    finish = None
    async for chunk in await client.chat.completions.create(
            model=MODEL, messages=ask(question), tools=TOOLS, tool_choice="required", max_tokens=120,
            temperature=0, stream=True):
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", ""])
            entry[0] += (call.function.name or "") if call.function else ""
            entry[1] += (call.function.arguments or "") if call.function else ""
        finish = choice.finish_reason or finish
    return [(name, arguments) for name, arguments in calls.values()], finish


def test_required_tool_calls_validate_streamed_or_not_and_a_round_trip_is_accepted(server) -> None:
    import openai

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            # one call per answer: the guide ends after it, so the answer ends by itself
            whole = await asyncio.gather(*(client.chat.completions.create(
                model=MODEL, messages=ask(q), tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                max_tokens=120, temperature=0) for q in QUESTIONS))
            for answer in whole:
                message = answer.choices[0].message
                assert answer.choices[0].finish_reason == "tool_calls" and len(message.tool_calls) == 1, message
                check_calls([(c.function.name, c.function.arguments) for c in message.tool_calls])
            # parallel calls allowed (the default): a small model may go on calling until max_tokens; every call
            # that came out whole validates
            for question in QUESTIONS[:3]:
                calls, finish = await streamed(client, question)
                assert finish in ("tool_calls", "length")
                check_calls(calls)
            named = await client.chat.completions.create(
                model=MODEL, messages=ask("Hello!"), tools=TOOLS, max_tokens=120, temperature=0,
                tool_choice={"type": "function", "function": {"name": "add"}})
            assert {c.function.name for c in named.choices[0].message.tool_calls} == {"add"}
            # the round trip: the call goes back in the history with the tool's result, and the model answers
            call = whole[0].choices[0].message.tool_calls[0]
            history = ask(QUESTIONS[0]) + [
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})},
            ]
            final = await client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS,
                                                         max_tokens=40, temperature=0)
            assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
            bad = {"type": "function", "function": {"name": "nope"}}
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model=MODEL, messages=ask("Hi"), tools=TOOLS, tool_choice=bad)
            assert info.value.param.startswith("tool_choice")
        finally:
            await client.close()

    asyncio.run(run())
