"""Every field of OpenAI's chat and completions request bodies is honoured, ignored (the README's short list)
or refused with a 400 that names it: a walk over `serving/openai_params.py`.

Unit calls of `check_fields` and the parsers, and the real app in-process over a fake worker (http_front).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from http_front import HttpFront
from openai.types import completion_create_params as completion_params
from openai.types.chat import completion_create_params as chat_params
from test_grpc_front import MODEL

from genie.errors import InvalidRequest
from genie.serving.openai_params import CHAT, COMPLETIONS, PARAMS, Param, Support, check_fields, params_of
from genie.serving.protocol import parse_chat, parse_completion

PATHS = {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions"}
MESSAGES = [{"role": "user", "content": "Hi"}]
# A value of the right shape for each honoured or ignored field (anything else: a string)
SAMPLE: dict[str, Any] = {
    "model": MODEL.name, "messages": MESSAGES, "prompt": "Hi", "max_tokens": 2, "max_completion_tokens": 2,
    "temperature": 0.0, "top_p": 1.0, "seed": 1, "stop": ["\n\n"], "stream": False,
    "stream_options": {"include_usage": True}, "logprobs": False, "top_logprobs": 0, "echo": False,
    "top_k": 0, "ignore_eos": True, "n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {},
    "best_of": 1, "suffix": "", "min_tokens": 0, "repetition_penalty": 1.0, "stop_token_ids": [],
    "store": True, "metadata": {"team": "a"}, "service_tier": "auto", "user": "user-1",
    "safety_identifier": "user-1", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"}, "response_format": {"type": "text"},
    "guided_json": {"type": "object"}, "guided_regex": "a+", "guided_choice": ["a", "b"],
    "guided_grammar": 'root ::= "a"',
    "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto", "parallel_tool_calls": True,
}
# A value that asks for the feature (refused fields)
ASKS: dict[str, Any] = {
    "functions": [{"name": "f"}], "function_call": "auto",
    "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "high", "verbosity": "low",
    "web_search_options": {}, "moderation": {"model": "omni-moderation-latest"}, "min_p": 0.1,
    "use_beam_search": True, "bad_words": ["x"], "allowed_token_ids": [1, 2],
}


def _openai_fields(module: Any) -> set[str]:
    return set(module.CompletionCreateParamsBase.__annotations__) | {"stream"}


def _cases(support: Support) -> list[tuple[str, Param]]:
    return [(e, p) for p in PARAMS if p.support is support for e in sorted(p.endpoints)]


def _ids(cases: list[tuple[str, Param]]) -> list[str]:
    return [f"{e}-{p.name}" for e, p in cases]


def _valid(endpoint: str, **fields: Any) -> dict[str, Any]:
    base = {"messages": MESSAGES} if endpoint == CHAT else {"prompt": "Hi"}
    return {"model": MODEL.name, "max_tokens": 2, **base, **fields}


def _parse(endpoint: str, body: dict[str, Any]) -> None:
    (parse_chat if endpoint == CHAT else parse_completion)(body, MODEL.name)


@pytest.mark.parametrize(("endpoint", "module"), [(CHAT, chat_params), (COMPLETIONS, completion_params)])
def test_every_field_of_the_openai_client_is_in_the_table(endpoint: str, module: Any) -> None:
    missing = _openai_fields(module) - set(params_of(endpoint))
    assert not missing, f"add these {endpoint} fields to serving/openai_params.py: {sorted(missing)}"


def test_the_ignore_list_is_short_and_is_bookkeeping_only() -> None:
    ignored = {p.name for p in PARAMS if p.support is Support.IGNORED}
    assert ignored == {"user", "safety_identifier", "store", "metadata", "service_tier", "prompt_cache_key",
                       "prompt_cache_retention", "prompt_cache_options"}
    assert all(p.why for p in PARAMS if p.support is not Support.HONOURED), "each ignored or refused says why"


def test_every_field_the_spec_describes_is_honoured_or_ignored() -> None:
    from genie.serving.openapi import openapi_spec

    schemas = openapi_spec(MODEL, 100)["components"]["schemas"]
    for endpoint, schema in ((CHAT, "ChatCompletionRequest"), (COMPLETIONS, "CompletionRequest")):
        table = params_of(endpoint)
        for name in schemas[schema]["properties"]:
            assert table[name].support is not Support.REFUSED, (endpoint, name)
        assert schemas[schema]["additionalProperties"] is False, "any other field is a 400"


@pytest.mark.parametrize(("endpoint", "param"), _cases(Support.REFUSED), ids=_ids(_cases(Support.REFUSED)))
def test_a_refused_field_is_a_400_that_names_it(endpoint: str, param: Param) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_fields(_valid(endpoint, **{param.name: ASKS[param.name]}), endpoint)
    exc = info.value
    assert (exc.http_status, exc.param, exc.code) == (400, param.name, "unsupported_parameter")
    assert f"'{param.name}' is not supported" in str(exc) and "leave it out" in str(exc)
    for value in (None, *param.neutral):  # asking for nothing is fine
        check_fields(_valid(endpoint, **{param.name: value}), endpoint)


@pytest.mark.parametrize(("endpoint", "param"), _cases(Support.HONOURED), ids=_ids(_cases(Support.HONOURED)))
def test_an_honoured_field_passes_the_check(endpoint: str, param: Param) -> None:
    check_fields(_valid(endpoint, **{param.name: SAMPLE[param.name]}), endpoint)


@pytest.mark.parametrize(("endpoint", "param"), _cases(Support.HONOURED), ids=_ids(_cases(Support.HONOURED)))
def test_an_honoured_field_is_read_by_the_parser(endpoint: str, param: Param) -> None:
    """A wrong-typed value is refused naming the field: the parser looks at it, so the table tells the truth."""
    wrong = "x" if isinstance(SAMPLE[param.name], dict) else {"wrong": "type"}
    try:
        _parse(endpoint, _valid(endpoint, **{param.name: wrong}))
    except InvalidRequest as exc:
        assert exc.param == param.name, str(exc)
        return
    pytest.fail(f"protocol.py does not read '{param.name}', which the table marks honoured")


@pytest.mark.parametrize(("endpoint", "param"), _cases(Support.IGNORED), ids=_ids(_cases(Support.IGNORED)))
def test_an_ignored_field_passes_the_check(endpoint: str, param: Param) -> None:
    check_fields(_valid(endpoint, **{param.name: SAMPLE[param.name]}), endpoint)


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("name", ["thinking", "num_ctx", "echo_back"])
def test_an_unknown_field_is_a_400_that_names_it(endpoint: str, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_fields(_valid(endpoint, **{name: 1}), endpoint)
    assert (info.value.param, info.value.code) == (name, "unknown_parameter")
    assert PATHS[endpoint] in str(info.value)


def test_fields_of_the_other_endpoint_are_unknown() -> None:
    for endpoint, name in ((CHAT, "prompt"), (CHAT, "suffix"), (COMPLETIONS, "messages"), (COMPLETIONS, "tools")):
        with pytest.raises(InvalidRequest) as info:
            check_fields(_valid(endpoint, **{name: SAMPLE.get(name, [])}), endpoint)
        assert (info.value.param, info.value.code) == (name, "unknown_parameter")


def test_an_unknown_name_is_quoted_short() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_fields({"x" * 10_000: 1}, CHAT)
    assert len(str(info.value)) < 300


async def _post(front: HttpFront, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await front.client.post(PATHS[endpoint], data=json.dumps(body), headers={"Content-Type": "application/json"})
    return resp.status, await resp.json()


async def test_ignored_fields_are_served_with_200(front: HttpFront) -> None:
    for endpoint, param in _cases(Support.IGNORED):
        status, reply = await _post(front, endpoint, _valid(endpoint, **{param.name: SAMPLE[param.name]}))
        assert status == 200, (endpoint, param.name, reply)


async def test_refused_and_unknown_fields_are_400_at_the_door(front: HttpFront) -> None:
    asked = [(e, p.name, ASKS[p.name], "unsupported_parameter") for e, p in _cases(Support.REFUSED)]
    for endpoint, name, value, code in asked + [(CHAT, "thinking", True, "unknown_parameter")]:
        status, reply = await _post(front, endpoint, _valid(endpoint, **{name: value}))
        error = reply["error"]
        assert (status, error["param"], error["code"], error["type"]) == (400, name, code, "invalid_request_error")
    assert not front.worker.seen, "a refused request never reaches a worker"
