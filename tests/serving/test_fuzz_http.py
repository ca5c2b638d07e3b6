"""Schemathesis against a real genie-serve, from the spec the server itself serves at /openapi.json.

Bodies inside the spec (positive) and outside it (negative) go to every operation; any 5xx, dropped
connection or call over 30 s fails. Generation stays short: each case asks for at most MAX_TOKENS tokens
(the spec allows up to the context; only the fuzzer is held back), and the server's default is as small.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

pytestmark = pytest.mark.slow

MAX_TOKENS = 4
EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}  # per POST operation
CALL_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def server(serve_smollm2):
    return serve_smollm2(default_max_tokens=MAX_TOKENS)


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def short(body):
    """Caps the tokens a case asks for, so a few hundred cases run in a couple of minutes."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
                body[key] = MAX_TOKENS
    return body


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.cases = 0

    def call(self, case, url: str, session: requests.Session) -> None:
        if case.body is not None:
            case.body = short(case.body)
        self.cases += 1
        try:
            resp = case.call(base_url=url, session=session, timeout=CALL_TIMEOUT_S)
        except requests.RequestException as exc:
            raise AssertionError(f"{case.method} {case.path}: no answer ({exc!r}) for {case.body!r:.300}") from None
        self.statuses[resp.status_code] += 1
        assert resp.status_code < 500, f"{case.method} {case.path} -> {resp.status_code} {resp.text[:300]} for {case.body!r:.300}"


def fuzz(schema, path: str, method: str, mode: GenerationMode, examples: int, url: str) -> Tally:
    tally = Tally()
    session = requests.Session()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=schema[path][method].as_strategy(mode))
    def run(case) -> None:
        tally.call(case, url, session)

    run()
    session.close()
    return tally


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_fuzzed_bodies_never_get_a_5xx(server, schema, path: str, mode: GenerationMode) -> None:
    tally = fuzz(schema, path, "POST", mode, EXAMPLES[mode], server.url)
    print(f"{path} {mode.value}: {tally.cases} cases, statuses {dict(tally.statuses)}")
    assert tally.cases >= EXAMPLES[mode] // 2
    if mode is GenerationMode.POSITIVE:
        assert tally.statuses[200] > 0, "some bodies inside the spec must be served"


def test_every_get_operation_answers_without_a_5xx(server, schema) -> None:
    gets = [op for op in (r.ok() for r in schema.get_all_operations()) if op.method.upper() == "GET"]
    assert len(gets) >= 5  # schemathesis leaves out the spec's own path
    for op in gets:
        tally = fuzz(schema, op.path, "GET", GenerationMode.POSITIVE, 5, server.url)
        assert tally.statuses and all(s < 500 for s in tally.statuses), (op.path, tally.statuses)


def test_the_server_is_still_ready_after_fuzzing(server) -> None:
    with urllib.request.urlopen(f"{server.url}/health/ready", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ready"}
    assert server.alive()
    assert "unexpected error" not in server.log_tail(), server.log_tail()
