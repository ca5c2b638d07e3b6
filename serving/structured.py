"""Structured outputs at the door: OpenAI's `response_format` and vLLM's `guided_*` fields become one guide
(kind, spec) for the worker's constrained decoding (workers/engine/guides.py).

The guide is checked here, without a tokenizer (xgrammar parses it in about a millisecond), so a bad schema,
regex or grammar is a 400 whose `param` names the field, before the request is queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from genie.errors import InvalidRequest
from genie.workers.guide_specs import parse_grammar

MAX_GUIDE_CHARS = 65536  # a schema, regex or grammar longer than this is refused
MAX_CHOICES = 256
# vLLM's extra body fields, by the guide kind each asks for
GUIDED_FIELDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


@dataclass(frozen=True, slots=True)
class Guide:
    kind: str = ""  # "" (free), "json", "json_schema", "regex", "choice", "grammar" (SamplingParams.guide_kind)
    spec: str = ""  # SamplingParams.guide_spec


FREE = Guide()


def parse_guide(body: dict[str, Any]) -> Guide:
    """The guide a request body asks for (FREE for none); at most one of response_format and guided_*."""
    asked = [(name, body[name]) for name in ("response_format", *GUIDED_FIELDS) if body.get(name) is not None]
    guides = [(name, _guide_of(name, value)) for name, value in asked]
    guides = [(name, g) for name, g in guides if g.kind]
    if len(guides) > 1:
        names = " and ".join(f"'{name}'" for name, _ in guides)
        raise InvalidRequest(f"{names} each constrain the output; send only one of them", param=guides[1][0])
    if not guides:
        return FREE
    name, guide = guides[0]
    _check(name, guide)
    return guide


def _guide_of(name: str, value: Any) -> Guide:
    if name == "response_format":
        return _response_format(value)
    kind = GUIDED_FIELDS[name]
    if kind == "json_schema":
        if isinstance(value, str):
            value = _json(value, name)
        if not isinstance(value, dict):
            raise InvalidRequest(f"'{name}' must be a JSON schema (an object, or its JSON text)", param=name)
        return Guide("json_schema", json.dumps(value))
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise InvalidRequest(f"'{name}' must be a non-empty list of non-empty strings", param=name)
        if len(value) > MAX_CHOICES:
            raise InvalidRequest(f"'{name}' takes at most {MAX_CHOICES} choices, got {len(value)}", param=name)
        return Guide("choice", json.dumps([_text(c, name) for c in value]))
    if not isinstance(value, str) or not value:
        what = "a regular expression" if kind == "regex" else "an EBNF grammar (xgrammar's GBNF dialect)"
        raise InvalidRequest(f"'{name}' must be {what} as a non-empty string", param=name)
    return Guide(kind, _text(value, name))


def _text(value: str, name: str) -> str:
    """Refuses NUL characters and lone surrogates, which no output text can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"'{name}' holds a lone surrogate, which is not valid Unicode text", param=name) from None
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' holds a NUL character, which the output cannot match", param=name)
    return value


def _response_format(value: Any) -> Guide:
    where = "response_format"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise InvalidRequest(f"'{where}' must be an object with a 'type': text, json_object or json_schema",
                             param=where)
    kind = value["type"]
    if kind == "text":
        return FREE
    if kind == "json_object":
        return Guide("json", "")
    if kind != "json_schema":
        raise InvalidRequest(f"'{where}.type' must be text, json_object or json_schema, got {kind[:40]!r}",
                             param=where)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(f"'{where}.json_schema' must be an object with 'name' and 'schema'", param=where)
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidRequest(f"'{where}.json_schema.name' must be a string of 1 to 64 characters", param=where)
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{where}.json_schema.schema' must be a JSON schema object", param=where)
    if not isinstance(spec.get("strict", False), (bool, type(None))):
        raise InvalidRequest(f"'{where}.json_schema.strict' must be a boolean", param=where)
    return Guide("json_schema", json.dumps(schema))


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"'{name}' is not valid JSON: {exc}", param=name) from None


def check_guide(name: str, guide: Guide) -> None:
    """A guide built at the door (tool calls' own), checked like a client's: a 400 naming `name` if it cannot
    constrain the output."""
    _check(name, guide)


def _check(name: str, guide: Guide) -> None:
    if len(guide.spec) > MAX_GUIDE_CHARS:
        raise InvalidRequest(f"'{name}' is {len(guide.spec)} characters long; at most {MAX_GUIDE_CHARS} are "
                             "taken", param=name)
    try:
        parse_grammar(guide.kind, guide.spec)
    except ValueError as exc:
        raise InvalidRequest(f"'{name}' cannot be used to constrain the output: {exc}", param=name) from None
