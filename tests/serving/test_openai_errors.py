"""Errors as OpenAI shapes them: `{"error": {message, type, param, code}}` with a string code and the field at
fault in param, so the real `openai` client raises the right class (NotFoundError, BadRequestError, ...).

In-process: the real app over a fake worker (http_front), and the real AsyncOpenAI client against it.
"""

from __future__ import annotations

import json
import pickle

import openai
import pytest
from http_front import HttpFront, http_front
from test_grpc_front import MODEL

from genie.auth import KeySet
from genie.errors import InvalidRequest, NotFound, ResourceExhausted, Unavailable, leading_field
from genie.serving.responses import error_of, error_type
from genie.serving.tokenizer import Tokenizer

JSON = {"Content-Type": "application/json"}
MESSAGES = [{"role": "user", "content": "Hi"}]
UNKNOWN = [
    ("/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES}),
    ("/v1/completions", {"model": "gpt-9", "prompt": "Hi"}),
    ("/v1/embeddings", {"model": "gpt-9", "input": "Hi"}),
]


@pytest.mark.parametrize(("message", "field"), [
    ("'temperature' must be between 0 and 2, got 5.0", "temperature"),
    ("'messages[0].content' must be a string, got int", "messages[0].content"),
    ("'stream_options.include_usage' must be a boolean", "stream_options.include_usage"),
    ("'input[3]' has 900 tokens", "input[3]"),
    ("'model': 'e5' is an embedding model", "model"),
    ("model 'gpt-9' is not served here", None),  # a quoted value, not at the start
    ("the request body must be a JSON object", None),
    ("'a b' is two words", None),
    ("", None),
])
def test_the_leading_quoted_field_is_the_param(message: str, field: str | None) -> None:
    assert leading_field(message) == field
    assert InvalidRequest(message).param == field


def test_codes_are_strings_by_class_status_or_raiser() -> None:
    assert InvalidRequest("'top_p' must be in (0, 1]").code == "invalid_value"
    assert InvalidRequest("the request body is not valid JSON").code == "invalid_request"
    assert InvalidRequest("no", param="seed", code="integer_above_max_value").code == "integer_above_max_value"
    assert NotFound("no such model").code == "not_found"
    assert ResourceExhausted("queue full").code == "rate_limit_exceeded"
    assert Unavailable("draining").code == "service_unavailable"


def test_an_error_keeps_its_param_and_code_through_pickling() -> None:
    exc = pickle.loads(pickle.dumps(NotFound("gone", param="model", code="model_not_found")))
    assert (str(exc), exc.param, exc.code) == ("gone", "model", "model_not_found")


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "invalid_request_error"),
                                              (404, "invalid_request_error"), (429, "requests"),
                                              (500, "server_error"), (503, "server_error")])
def test_types_are_openais(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_an_error_body_has_the_four_fields() -> None:
    body = error_of(InvalidRequest("'seed' must be an integer"))
    assert body == {"error": {"message": "'seed' must be an integer", "type": "invalid_request_error",
                              "param": "seed", "code": "invalid_value"}}


@pytest.mark.parametrize(("path", "body"), UNKNOWN, ids=[p for p, _ in UNKNOWN])
async def test_an_unknown_model_is_404_model_not_found(front: HttpFront, path: str, body: dict) -> None:
    resp = await front.client.post(path, data=json.dumps(body), headers=JSON)
    error = (await resp.json())["error"]
    assert resp.status == 404, error
    assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert "'gpt-9' is not served here" in error["message"] and MODEL.name in error["message"]


async def test_a_model_that_is_no_text_quotes_short_and_is_404(front: HttpFront) -> None:
    resp = await front.client.post("/v1/completions", data='{"model": "\\ud800", "prompt": "Hi"}', headers=JSON)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(("fields", "param"), [
    ({"temperature": 5}, "temperature"), ({"top_p": "x"}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["x"] * 5}, "stop"), ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
])
async def test_a_bad_field_is_named_in_param(front: HttpFront, fields: dict, param: str) -> None:
    resp = await front.client.post("/v1/chat/completions", data=json.dumps(front.chat(**fields)), headers=JSON)
    error = (await resp.json())["error"]
    assert resp.status == 400 and (error["param"], error["code"]) == (param, "invalid_value"), error


async def test_door_errors_have_string_codes(front: HttpFront) -> None:
    cases = [("/v1/completions", b"{not json", JSON, 400, "invalid_request"),
             ("/v1/completions", b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
             ("/v1/nothing-here", b"{}", JSON, 404, "not_found")]
    for path, data, headers, status, code in cases:
        resp = await front.client.post(path, data=data, headers=headers)
        error = (await resp.json())["error"]
        assert (resp.status, error["code"], error["param"]) == (status, code, None), (path, error)


async def test_a_wrong_key_is_invalid_api_key(tokenizer: Tokenizer) -> None:
    async with http_front(tokenizer, api_keys=KeySet(["sk-right"])) as front:
        resp = await front.client.post("/v1/completions", data=b"{}", headers=JSON)
        error = (await resp.json())["error"]
        assert (resp.status, error["code"], error["type"]) == (401, "invalid_api_key", "invalid_request_error")


def _client(front: HttpFront) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(front.client.make_url("/v1")), api_key="none", max_retries=0)


async def test_the_openai_client_raises_not_found_for_an_unknown_model(front: HttpFront) -> None:
    async with _client(front) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
        assert (info.value.status_code, info.value.code, info.value.param) == (404, "model_not_found", "model")
        with pytest.raises(openai.NotFoundError) as info:
            await client.embeddings.create(model="gpt-9", input="Hi")
        assert info.value.code == "model_not_found"


async def test_the_openai_client_raises_bad_request_with_param(front: HttpFront) -> None:
    async with _client(front) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=MODEL.name, messages=MESSAGES, temperature=5)
        assert (info.value.code, info.value.param, info.value.type) == ("invalid_value", "temperature",
                                                                       "invalid_request_error")
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model=MODEL.name, prompt="Hi", top_p=0)
        assert info.value.param == "top_p"
