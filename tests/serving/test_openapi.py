"""The OpenAPI spec matches the door: every route is described, every body the spec allows is accepted by the
same parsers the handlers use, and bodies it does not allow are refused as InvalidRequest, never a crash."""

from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from http_front import http_front, make_state
from schemathesis import GenerationMode
from test_grpc_front import MODEL

from genie.errors import InvalidRequest
from genie.serving.http import make_app
from genie.serving.openapi import openapi_spec
from genie.serving.protocol import parse_chat, parse_completion
from genie.serving.tokenizer import Tokenizer

VOCAB = 49152  # SmolLM2's; only bounds token ids in the spec
SPEC = openapi_spec(MODEL, VOCAB)
SCHEMA = schemathesis.openapi.from_dict(SPEC)
PARSERS = {"/v1/chat/completions": parse_chat, "/v1/completions": parse_completion}
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def test_every_route_is_in_the_spec_and_every_path_in_the_spec_is_a_route(tokenizer: Tokenizer) -> None:
    state, _, _ = make_state(tokenizer)
    routes = {(r.method.lower(), r.resource.canonical) for r in make_app(state).router.routes() if r.method != "HEAD"}
    described = {(method, path) for path, ops in SPEC["paths"].items() for method in ops}
    assert routes == described


def test_the_spec_is_valid_openapi() -> None:
    operations = [result.ok() for result in SCHEMA.get_all_operations()]
    assert len(operations) == len([m for ops in SPEC["paths"].values() for m in ops])


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_every_body_the_spec_allows_is_accepted(path: str) -> None:
    parse = PARSERS[path]

    @FUZZ
    @given(case=SCHEMA[path]["POST"].as_strategy(GenerationMode.POSITIVE))
    def accepted(case) -> None:
        parse(case.body, MODEL.name)

    accepted()


@pytest.mark.parametrize("path", sorted(PARSERS))
def test_bodies_outside_the_spec_are_refused_as_invalid_requests(path: str) -> None:
    parse = PARSERS[path]

    @FUZZ
    @given(case=SCHEMA[path]["POST"].as_strategy(GenerationMode.NEGATIVE))
    def refused_cleanly(case) -> None:
        try:
            parse(case.body, MODEL.name)
        except InvalidRequest:
            pass

    refused_cleanly()


async def test_the_spec_is_served_without_a_key(tokenizer: Tokenizer) -> None:
    from genie.auth import KeySet

    async with http_front(tokenizer, api_keys=KeySet(["sk-k"])) as front:
        resp = await front.client.get("/openapi.json")
        assert resp.status == 200
        assert await resp.json() == openapi_spec(MODEL, tokenizer.vocab_size)
