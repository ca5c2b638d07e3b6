"""Structured outputs through the real path: genie-serve with SmolLM2 on two worker processes, the real `openai`
client. json_schema answers (nested object, enum, array) all parse and validate, streamed too; json_object
answers parse; guided_choice answers one of the choices; a bad schema is a 400 naming the field; and free
greedy requests batched beside constrained ones give the same text as sent alone."""

from __future__ import annotations

import asyncio
import json

import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2"
N = 50  # the must-show: 50 of 50 parse and validate
TOKENS = 100
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                  "floor": {"type": "integer", "minimum": 0, "maximum": 99}},
                 "required": ["city", "floor"]},
        "toys": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["name", "kind", "home", "toys"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
FREE = ["Name a colour.", "Count from 1 to 5.", "What is a river?", "Say hello in French."]


@pytest.fixture(scope="module")
def server(serve_smollm2):
    return serve_smollm2()


@pytest.fixture
async def client(server):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    yield client
    await client.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def pet(client, i: int, stream: bool = False) -> str:
    messages = ask(f"Describe pet number {i} as JSON.")
    if not stream:
        reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=TOKENS,
                                                     temperature=0.8, seed=i, response_format=FORMAT)
        assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
        return reply.choices[0].message.content
    chunks = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=TOKENS,
                                                  temperature=0.8, seed=i, response_format=FORMAT, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def free(client, text: str) -> str:
    reply = await client.chat.completions.create(model=MODEL, messages=ask(text), max_tokens=16, temperature=0)
    return reply.choices[0].message.content


async def test_json_schema_answers_parse_and_validate_streamed_or_not(client) -> None:
    import jsonschema

    texts = await asyncio.gather(*(pet(client, i, stream=i % 5 == 0) for i in range(N)))
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 1  # sampled, not one answer repeated


async def test_json_object_and_guided_choice(client) -> None:
    objects = await asyncio.gather(*(client.chat.completions.create(
        model=MODEL, messages=ask(f'Reply with a JSON object that holds the number {i} under the key "n".'),
        max_tokens=TOKENS, temperature=0, response_format={"type": "json_object"}) for i in range(4)))
    for reply in objects:  # (a text cut by max_tokens could not parse: these prompts ask for short objects)
        assert reply.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    choices = ["sunny", "rainy", "snowy"]
    answers = await asyncio.gather(*(client.completions.create(
        model=MODEL, prompt=f"Day {i}: the weather was", max_tokens=10, temperature=1.0, seed=i,
        extra_body={"guided_choice": choices}) for i in range(4)))
    assert all(a.choices[0].text in choices for a in answers)


async def test_free_greedy_requests_beside_constrained_ones_answer_as_alone(client) -> None:
    alone = [await free(client, text) for text in FREE]
    mixed = await asyncio.gather(*(free(client, text) for text in FREE), *(pet(client, 100 + i) for i in range(4)))
    assert list(mixed[: len(FREE)]) == alone


async def test_a_bad_guide_is_a_400_naming_the_field(client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=ask("Hi"), max_tokens=4,
                                             extra_body={"guided_regex": "a(b"})
    assert err.value.param == "guided_regex"
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}}}
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=ask("Hi"), max_tokens=4, response_format=bad)
    assert err.value.param == "response_format" and "'not'" in err.value.message
