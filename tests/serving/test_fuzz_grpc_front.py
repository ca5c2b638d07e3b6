"""A protobuf fuzzer against the gRPC front door (`genie.inference.Inference`) of a real genie-serve.

Hypothesis builds GenerateRequests with every field across its whole wire range (NaN and infinite doubles,
int32/int64 extremes, odd strings, several prompt fields at once) and raw bytes that may not be protobuf at
all. Every call must end OK, INVALID_ARGUMENT or NOT_FOUND within 30 s: never INTERNAL or UNKNOWN (a crash
in the door), never UNAVAILABLE (a worker step failed), never a hang. Generations are held to a few tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc

pytestmark = pytest.mark.slow

MAX_TOKENS = 4
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
CALL_TIMEOUT_S = 30
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1e-41, 5e-324, 1.0, 2.0, 2.0000001])
TEXT = st.text(max_size=60) | st.sampled_from(["", " ", "\x00", "<|im_end|>", "\U0010ffff", "é" * 50])
ROLES = st.sampled_from(["system", "user", "assistant", "developer", "tool", "", "robot"]) | st.text(max_size=8)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def max_tokens() -> st.SearchStrategy[int | None]:
    """Short generations, or values the door must refuse; never a long valid run."""
    return st.none() | st.integers(1, MAX_TOKENS) | st.integers(-(2**31), 0) | st.integers(100_000, 2**31 - 1)


def mostly_valid(valid: st.SearchStrategy, wild: st.SearchStrategy) -> st.SearchStrategy:
    """Three draws in four from the valid range, so whole requests are often valid and reach the workers."""
    return st.integers(0, 3).flatmap(lambda n: wild if n == 0 else valid)


FIELDS = {
    "model": mostly_valid(st.sampled_from(["", "smollm2"]), TEXT),
    "top_k": mostly_valid(st.integers(0, 100), INT32),
    "stop": mostly_valid(st.lists(st.text(min_size=1, max_size=4), max_size=2), st.lists(TEXT, max_size=6)),
    "logprobs": mostly_valid(st.integers(0, 5), st.integers(-1, 21) | INT32),
    "ignore_eos": st.booleans(),
    "frequency_penalty": mostly_valid(st.floats(-2, 2), DOUBLES),
    "presence_penalty": mostly_valid(st.floats(-2, 2), DOUBLES),
    "logit_bias": mostly_valid(st.dictionaries(st.integers(0, 49151), st.floats(-100, 100), max_size=3),
                               st.dictionaries(INT32, DOUBLES, max_size=3)),
    "min_tokens": mostly_valid(st.integers(0, 2), INT32),
    "stop_token_ids": mostly_valid(st.lists(st.integers(0, 49151), max_size=3), st.lists(INT32, max_size=3)),
}
OPTIONAL = {
    "max_tokens": max_tokens(),
    "temperature": mostly_valid(st.floats(0, 2), DOUBLES),
    "top_p": mostly_valid(st.floats(0.01, 1), DOUBLES),
    "seed": INT64,
    "repetition_penalty": mostly_valid(st.floats(0.5, 2), DOUBLES),
}


@st.composite
def generate_requests(draw) -> pb.GenerateRequest:
    req = pb.GenerateRequest(**{name: draw(strategy) for name, strategy in FIELDS.items()})
    for name, strategy in OPTIONAL.items():
        value = draw(st.none() | strategy)
        if value is not None:
            setattr(req, name, value)
    given = draw(st.sampled_from(["prompt", "messages", "prompt_token_ids"]) | st.sets(
        st.sampled_from(["prompt", "messages", "prompt_token_ids"])))
    if "prompt" in given:
        req.prompt = draw(mostly_valid(st.text(min_size=1, max_size=60), TEXT))
    if "messages" in given:
        count = draw(st.integers(0, 3))
        req.messages.extend(pb.ChatMessage(role=draw(mostly_valid(st.sampled_from(["user", "system"]), ROLES)),
                                           content=draw(TEXT)) for _ in range(count))
    if "prompt_token_ids" in given:
        ids = mostly_valid(st.lists(st.integers(0, 49151), min_size=1, max_size=8), st.lists(INT32, max_size=8))
        req.prompt_token_ids.extend(draw(ids))
    return req


@pytest.fixture(scope="module")
def address(serve_smollm2) -> str:
    server = serve_smollm2(default_max_tokens=MAX_TOKENS, grpc_port=0)
    match = re.search(r"gRPC on (\S+?);", server.ready_line)
    assert match, server.ready_line
    return match.group(1)


@pytest.fixture(scope="module")
def channel(address: str):
    with grpc.insecure_channel(address) as channel:
        yield channel


def status_of(call: Callable[[], Iterable[object]]) -> grpc.StatusCode:
    """Makes the call and reads every reply; the status must be an acceptable one."""
    try:
        for _ in call():
            pass
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        assert err.code() in ACCEPTABLE, f"{err.code()}: {err.details()}"
        return err.code()


def test_fuzzed_generate_requests(channel) -> None:
    stub = inference_pb2_grpc.InferenceStub(channel)
    seen: dict[grpc.StatusCode, int] = {}

    @fuzz(500)
    @given(request=generate_requests())
    def run(request: pb.GenerateRequest) -> None:
        code = status_of(lambda: stub.Generate(request, timeout=CALL_TIMEOUT_S))
        seen[code] = seen.get(code, 0) + 1

    run()
    print(f"Generate: {sum(seen.values())} cases, {({c.name: n for c, n in seen.items()})}")
    assert seen.get(grpc.StatusCode.OK) and seen.get(grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize(("method", "streaming"), [("Generate", True), ("ListModels", False), ("Health", False)])
def test_raw_bytes_to_every_rpc(channel, method: str, streaming: bool) -> None:
    path = f"/genie.inference.Inference/{method}"
    call = channel.unary_stream(path) if streaming else channel.unary_unary(path)
    seen: dict[grpc.StatusCode, int] = {}

    @fuzz(100)
    @given(payload=st.binary(max_size=200))
    def run(payload: bytes) -> None:
        code = status_of(lambda: call(payload, timeout=CALL_TIMEOUT_S) if streaming else [call(payload, timeout=CALL_TIMEOUT_S)])
        seen[code] = seen.get(code, 0) + 1

    run()
    print(f"{method} raw bytes: {sum(seen.values())} cases, {({c.name: n for c, n in seen.items()})}")


def test_the_door_still_serves_after_fuzzing(channel) -> None:
    stub = inference_pb2_grpc.InferenceStub(channel)
    health = stub.Health(pb.HealthRequest(), timeout=5)
    assert health.live and health.ready, health.reasons
    msgs = list(stub.Generate(pb.GenerateRequest(prompt="Hello", max_tokens=2, ignore_eos=True), timeout=30))
    assert msgs[-1].usage.completion_tokens == 2
