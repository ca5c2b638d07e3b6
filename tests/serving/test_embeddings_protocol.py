"""/v1/embeddings parsing and response shape, down to the bytes the openai client decodes."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

try:  # newer openai releases are built on httpx2; older ones on httpx
    import httpx2 as httpx
except ImportError:
    import httpx

from genie.errors import InvalidRequest
from genie.serving.embeddings_protocol import (
    MAX_INPUTS,
    EmbeddingsRequest,
    embeddings_response,
    parse_embeddings,
)


def parse(**body) -> EmbeddingsRequest:
    return parse_embeddings({"model": "m", **body})


def refused(body: object, *fragments: str, default_model: str | None = None) -> str:
    with pytest.raises(InvalidRequest) as err:
        parse_embeddings(body, default_model=default_model)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


# --- input forms -------------------------------------------------------------------------------------------


def test_a_string_is_one_text_input() -> None:
    req = parse(input="hello")
    assert req == EmbeddingsRequest("m", ("hello",), False, "float", None, None)


def test_a_list_of_strings_is_several_inputs() -> None:
    req = parse(input=["a", "b c", "d"])
    assert req.inputs == ("a", "b c", "d") and req.token_input is False


def test_a_list_of_ints_is_one_token_input() -> None:
    req = parse(input=[1, 2, 0, 2**31 - 1])
    assert req.inputs == ((1, 2, 0, 2**31 - 1),) and req.token_input is True


def test_a_flat_token_list_may_be_longer_than_the_input_limit() -> None:
    req = parse(input=[7] * (MAX_INPUTS + 10))
    assert len(req.inputs) == 1 and len(req.inputs[0]) == MAX_INPUTS + 10


def test_a_list_of_token_lists_is_several_token_inputs() -> None:
    req = parse(input=[[1, 2], [3], [4, 5, 6]])
    assert req.inputs == ((1, 2), (3,), (4, 5, 6)) and req.token_input is True


def test_options_are_read() -> None:
    req = parse(input="x", encoding_format="base64", dimensions=256, user="u-1")
    assert (req.encoding_format, req.dimensions, req.user) == ("base64", 256, "u-1")


def test_nulls_read_as_left_out_and_unknown_keys_are_ignored_like_the_other_routes() -> None:
    req = parse(input="x", encoding_format=None, dimensions=None, user=None, some_future_field={"a": 1})
    assert (req.encoding_format, req.dimensions, req.user) == ("float", None, None)


def test_a_missing_model_takes_the_default() -> None:
    assert parse_embeddings({"input": "x"}, default_model="served").model == "served"
    assert parse_embeddings({"input": "x", "model": None}, default_model="served").model == "served"
    assert parse_embeddings({"input": "x", "model": "other"}, default_model="served").model == "other"


def test_exactly_the_limit_of_inputs_is_accepted() -> None:
    assert len(parse(input=["a"] * MAX_INPUTS).inputs) == MAX_INPUTS


# --- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ([1, 2], ["request body", "JSON object"]),
        ({"model": "m"}, ["'input' is required"]),
        ({"model": "m", "input": None}, ["'input' is required"]),
        ({"model": "m", "input": ""}, ["'input' is an empty string"]),
        ({"model": "m", "input": ["a", "b", ""]}, ["'input[2]' is an empty string"]),
        ({"model": "m", "input": []}, ["'input' is an empty list; give at least one string"]),
        ({"model": "m", "input": [[1], []]}, ["'input[1]' is an empty list"]),
        ({"model": "m", "input": 5}, ["'input' must be", "got int"]),
        ({"model": "m", "input": {"text": "a"}}, ["'input' must be", "got dict"]),
        ({"model": "m", "input": ["a", 1]}, ["'input[1]' is a token id but 'input[0]' is a string"]),
        ({"model": "m", "input": [1, "a"]}, ["'input[1]' is a string but 'input[0]' is a token id"]),
        ({"model": "m", "input": [[1], 2]}, ["'input[1]' is a token id but 'input[0]' is a list of token ids"]),
        ({"model": "m", "input": ["a", ["b"]]}, ["'input[1]' is a list of token ids"]),
        ({"model": "m", "input": [None]}, ["'input[0]'", "null"]),
        ({"model": "m", "input": [1.5]}, ["'input[0]'", "float"]),
        ({"model": "m", "input": [1, 2, 1.0]}, ["'input[2]'", "float"]),
        ({"model": "m", "input": [[1, 2], [3, "4"]]}, ["'input[1][1]' must be a token id", "str"]),
        ({"model": "m", "input": [[1, [2]]]}, ["'input[0][1]' must be a token id", "list"]),
        ({"model": "m", "input": [1, -1]}, ["'input[1]' must be a token id between 0 and", "-1"]),
        ({"model": "m", "input": [[0], [5, -3]]}, ["'input[1][1]'", "-3"]),
        ({"model": "m", "input": [1, 2**31]}, ["'input[1]'", "between 0 and 2147483647"]),
        ({"model": "m", "input": [True, 1]}, ["'input[0]'", "bool"]),
        ({"model": "m", "input": [1, False]}, ["'input[1]'", "bool"]),
        ({"model": "m", "input": [[1, True]]}, ["'input[0][1]'", "bool"]),
        ({"model": "m", "input": ["ok", "\ud800"]}, ["'input[1]'", "surrogate"]),
        ({"model": "m", "input": ["a"] * (MAX_INPUTS + 1)}, [f"{MAX_INPUTS + 1} inputs", f"at most {MAX_INPUTS}"]),
        ({"model": "m", "input": [[1]] * (MAX_INPUTS + 1)}, [f"at most {MAX_INPUTS}"]),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, ["'encoding_format'", "float", "base64", "int8"]),
        ({"model": "m", "input": "x", "encoding_format": ["float"]}, ["'encoding_format'"]),
        ({"model": "m", "input": "x", "encoding_format": "FLOAT"}, ["'encoding_format'"]),
        ({"model": "m", "input": "x", "dimensions": 0}, ["'dimensions' must be a positive integer", "0"]),
        ({"model": "m", "input": "x", "dimensions": -8}, ["'dimensions'"]),
        ({"model": "m", "input": "x", "dimensions": 64.0}, ["'dimensions'", "float"]),
        ({"model": "m", "input": "x", "dimensions": True}, ["'dimensions'", "bool"]),
        ({"model": "m", "input": "x", "dimensions": "64"}, ["'dimensions'", "str"]),
        ({"model": "m", "input": "x", "user": 7}, ["'user' must be a string"]),
        ({"input": "x"}, ["'model' is required"]),
        ({"model": 3, "input": "x"}, ["'model'", "string"]),
        ({"model": "", "input": "x"}, ["'model'"]),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(body: object, fragments: list[str]) -> None:
    refused(body, *fragments)


def test_a_wrong_model_type_is_refused_even_with_a_default() -> None:
    refused({"model": 3, "input": "x"}, "'model'", default_model="served")


def test_a_huge_bad_value_is_quoted_short() -> None:
    message = refused({"model": "m", "input": "x", "encoding_format": "z" * 10_000}, "'encoding_format'")
    assert len(message) < 200


def test_refusals_are_400s() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(input=[])
    assert err.value.http_status == 400


# --- response ----------------------------------------------------------------------------------------------

VECTORS = np.array([[0.1, -2.5, 3.0e-8, 1.0], [np.pi, 0.0, -0.0, 65504.0]], dtype=np.float32)


def test_float_response_has_the_openai_shape_and_python_floats() -> None:
    body = embeddings_response("m", VECTORS, "float", prompt_tokens=7)
    assert body["object"] == "list" and body["model"] == "m"
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    for row, item in zip(VECTORS, body["data"]):
        assert all(type(x) is float for x in item["embedding"])
        assert np.array_equal(np.array(item["embedding"], dtype=np.float32), row)
    json.dumps(body)  # serialisable as is


def test_base64_is_the_little_endian_float32_bytes() -> None:
    body = embeddings_response("m", VECTORS, "base64", prompt_tokens=3)
    for row, item in zip(VECTORS, body["data"]):
        raw = base64.b64decode(item["embedding"])
        assert raw == row.astype("<f4").tobytes()
        decoded = np.frombuffer(raw, dtype="float32")
        assert decoded.view(np.uint32).tolist() == row.view(np.uint32).tolist()  # bitwise, -0.0 included


def test_float64_vectors_are_sent_as_float32_in_both_formats() -> None:
    vectors = np.array([[0.1, 1 / 3]], dtype=np.float64)
    floats = embeddings_response("m", vectors, "float", 1)["data"][0]["embedding"]
    packed = embeddings_response("m", vectors, "base64", 1)["data"][0]["embedding"]
    from_b64 = np.frombuffer(base64.b64decode(packed), dtype="float32")
    assert floats == from_b64.tolist() == vectors[0].astype(np.float32).tolist()
    assert floats != vectors[0].tolist()  # float64 values would differ in the last digits


def test_a_bad_shape_or_format_is_a_server_bug() -> None:
    with pytest.raises(ValueError, match="shape"):
        embeddings_response("m", VECTORS[0], "float", 1)
    with pytest.raises(ValueError, match="encoding_format"):
        embeddings_response("m", VECTORS, "int8", 1)


# --- the real openai client, served through an in-process transport (no network) -------------------------


def fake_server(vectors: np.ndarray, seen: list[EmbeddingsRequest]) -> openai.OpenAI:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        req = parse_embeddings(json.loads(request.content))
        seen.append(req)
        body = embeddings_response(req.model, vectors[: len(req.inputs)], req.encoding_format, prompt_tokens=5)
        return httpx.Response(200, json=body)

    transport = httpx.MockTransport(handle)
    return openai.OpenAI(base_url="http://test/v1", api_key="k", http_client=httpx.Client(transport=transport))


def test_the_openai_client_decodes_its_default_base64_to_our_float32_values() -> None:
    seen: list[EmbeddingsRequest] = []
    client = fake_server(VECTORS, seen)
    out = client.embeddings.create(model="m", input=["a", "b"])
    assert seen[0].encoding_format == "base64"  # what the client asks for when the caller names none
    assert seen[0].inputs == ("a", "b")
    assert [d.index for d in out.data] == [0, 1]
    for row, item in zip(VECTORS, out.data):
        assert np.array_equal(np.array(item.embedding, dtype=np.float32), row)
    assert out.usage.prompt_tokens == 5 and out.usage.total_tokens == 5


def test_the_openai_client_reads_float_and_token_inputs() -> None:
    seen: list[EmbeddingsRequest] = []
    client = fake_server(VECTORS, seen)
    out = client.embeddings.create(model="m", input=[[1, 2], [3]], encoding_format="float", dimensions=4)
    assert seen[0].inputs == ((1, 2), (3,)) and seen[0].token_input and seen[0].dimensions == 4
    assert out.data[1].embedding == VECTORS[1].tolist()
