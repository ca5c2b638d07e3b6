"""Structured outputs at the door (serving/structured.py): response_format and the guided_* fields become the
worker's (guide_kind, guide_spec), and a bad guide is a 400 naming its field before anything is queued."""

from __future__ import annotations

import json

import pytest

from genie.errors import InvalidRequest
from genie.serving.generation import sampling_of
from genie.serving.protocol import parse_chat, parse_completion
from genie.serving.structured import FREE, Guide, parse_guide

MODEL = "m"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


@pytest.mark.parametrize(("fields", "guide"), [
    ({}, FREE),
    ({"response_format": {"type": "text"}}, FREE),
    ({"response_format": {"type": "json_object"}}, Guide("json", "")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}},
     Guide("json_schema", json.dumps(SCHEMA))),
    ({"guided_json": SCHEMA}, Guide("json_schema", json.dumps(SCHEMA))),
    ({"guided_json": json.dumps(SCHEMA)}, Guide("json_schema", json.dumps(SCHEMA))),
    ({"guided_regex": "[0-9]+"}, Guide("regex", "[0-9]+")),
    ({"guided_choice": ["yes", "no"]}, Guide("choice", '["yes", "no"]')),
    ({"guided_grammar": 'root ::= "a" | "b"'}, Guide("grammar", 'root ::= "a" | "b"')),
    ({"response_format": {"type": "text"}, "guided_regex": "a"}, Guide("regex", "a")),
])
def test_each_field_becomes_one_guide(fields: dict, guide: Guide) -> None:
    assert parse_guide(fields) == guide
    params = parse_chat(chat(**fields), MODEL).params
    sampling = sampling_of(params, 7)
    assert (sampling.guide_kind, sampling.guide_spec, sampling.prompt_len) == (guide.kind, guide.spec, 7)


def test_completions_take_them_too() -> None:
    body = {"model": MODEL, "prompt": "Hi", "response_format": {"type": "json_object"}}
    assert parse_completion(body, MODEL).params.guide_kind == "json"
    body = {"model": MODEL, "prompt": "Hi", "guided_choice": ["a"]}
    assert parse_completion(body, MODEL).params.guide_kind == "choice"


@pytest.mark.parametrize(("fields", "param", "words"), [
    ({"guided_regex": "a(b"}, "guided_regex", "parenthesis"),
    ({"guided_grammar": "root ::= missing"}, "guided_grammar", "missing"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_json": {"properties": 3}}, "guided_json", "properties must be an object"),
    ({"guided_choice": []}, "guided_choice", "non-empty list"),
    ({"guided_choice": ["a", ""]}, "guided_choice", "non-empty strings"),
    ({"guided_regex": ""}, "guided_regex", "non-empty string"),
    ({"response_format": {"type": "yaml"}}, "response_format", "text, json_object or json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "'name' and 'schema'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, "response_format", "name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"not": {}}}}},
     "response_format", "'not'"),
    ({"guided_json": {"type": "array", "uniqueItems": True}}, "guided_json", "'uniqueItems'"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "send only one"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "send only one"),
])
def test_a_bad_guide_is_a_400_naming_its_field(fields: dict, param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_chat(chat(**fields), MODEL)
    assert (err.value.http_status, err.value.param) == (400, param)
    assert words in str(err.value) and ".cc:" not in str(err.value)


def test_property_names_that_look_like_keywords_are_fine() -> None:
    schema = {"type": "object", "properties": {"not": {"type": "string"}, "if": {"enum": ["a"]}}}
    assert parse_guide({"guided_json": schema}).kind == "json_schema"
