"""The sampling parameters at both doors' parser: OpenAI's names and ranges in, GenerationParams and the
worker's SamplingParams out; the gRPC fields map onto the same checks; the worker link carries them all."""

from __future__ import annotations

import pytest

from genie.errors import InvalidRequest
from genie.protos import inference_pb2 as pb
from genie.serving.generation import ServedModel, build_generation
from genie.serving.grpc_server import params_from_pb
from genie.serving.protocol import parse_params
from genie.workers.codec import sampling_from_pb, sampling_to_pb

MODEL = ServedModel("m", max_context=64, default_max_tokens=8, created=0)
BODY = {"frequency_penalty": 0.5, "presence_penalty": -1, "repetition_penalty": 1.2,
        "logit_bias": {"7": -100, "3": 2.5}, "min_tokens": 4, "stop_token_ids": [9, 2, 9]}


def test_http_fields_reach_the_worker_params() -> None:
    params = parse_params(BODY, chat=False)
    assert params.logit_bias == ((3, 2.5), (7, -100.0)) and params.stop_token_ids == (2, 9)
    gen = build_generation(MODEL, [1, 2, 3], params)
    s = gen.sampling
    assert (s.frequency_penalty, s.presence_penalty, s.repetition_penalty) == (0.5, -1.0, 1.2)
    assert (s.min_tokens, s.prompt_len, gen.stop_token_ids) == (4, 3, (2, 9))
    assert s.processes_logits and s.counts_tokens
    assert sampling_from_pb(sampling_to_pb(s)) == s  # the worker link carries every field


def test_defaults_keep_the_plain_path() -> None:
    s = build_generation(MODEL, [1, 2], parse_params({}, chat=False)).sampling
    assert not s.processes_logits and not s.counts_tokens


@pytest.mark.parametrize(("fields", "words"), [
    ({"frequency_penalty": 2.01}, "'frequency_penalty' must be between -2 and 2"),
    ({"presence_penalty": "x"}, "'presence_penalty' must be a number"),
    ({"repetition_penalty": -1}, "'repetition_penalty' must be in (0, 2]"),
    ({"logit_bias": [1]}, "'logit_bias' must be an object"),
    ({"logit_bias": {"-1": 1}}, "'logit_bias' keys must be token ids"),
    ({"logit_bias": {"1": -100.5}}, "'logit_bias' values must be between -100 and 100"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "'logit_bias' takes at most 300"),
    ({"min_tokens": 1.5}, "'min_tokens' must be an integer"),
    ({"stop_token_ids": "7"}, "'stop_token_ids' must be a list of token ids"),
    ({"n": 0}, "'n' must be between 1 and 16"),
])
def test_out_of_range_is_refused_naming_the_field(fields, words) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_params(fields, chat=False)
    assert words in str(err.value)
    assert err.value.param == words.split("'")[1]


def test_top_logprobs_needs_logprobs_on_chat() -> None:
    with pytest.raises(InvalidRequest, match="'top_logprobs' needs 'logprobs': true"):
        parse_params({"top_logprobs": 3}, chat=True)
    assert parse_params({"top_logprobs": 3, "logprobs": True}, chat=True).logprobs == 3
    assert parse_params({"top_logprobs": 0}, chat=True).logprobs == 0


def test_grpc_fields_map_onto_the_same_checks() -> None:
    req = pb.GenerateRequest(prompt="x", frequency_penalty=0.5, presence_penalty=-1, repetition_penalty=1.2,
                             logit_bias={7: -100, 3: 2.5}, min_tokens=4, stop_token_ids=[9, 2, 9])
    assert params_from_pb(req) == parse_params(BODY, chat=False)
    assert params_from_pb(pb.GenerateRequest(prompt="x")).repetition_penalty == 1.0
    with pytest.raises(InvalidRequest, match="'logit_bias' values"):
        params_from_pb(pb.GenerateRequest(prompt="x", logit_bias={1: 1000}))


@pytest.mark.parametrize(("fields", "words"), [
    ({"suffix": "the end"}, "'suffix' is not supported"),
    ({"best_of": 2}, "'best_of' must be 1"),
    ({"echo": True, "logprobs": 2}, "'echo' with 'logprobs' is not supported"),
])
def test_completion_only_fields_refused_naming_them(fields, words) -> None:
    from genie.serving.protocol import parse_completion

    with pytest.raises(InvalidRequest, match=words):
        parse_completion({"model": "m", "prompt": "Hi", **fields}, "m")
    assert parse_completion({"model": "m", "prompt": "Hi", "suffix": "", "best_of": 1, "echo": True}, "m").echo


def test_token_bytes_rebuild_the_text_even_across_split_characters(smollm2_dir) -> None:
    from genie.serving.tokenizer import Tokenizer

    tok = Tokenizer(smollm2_dir)
    text = "héllo 😀 Paris\n"
    pieces = [tok.token_bytes(t) for t in tok.encode(text)]
    assert bytes(b for piece in pieces for b in piece).decode() == text
    assert any(len(p) and bytes(p).decode("utf-8", "replace") != bytes(p).decode("utf-8", "ignore") for p in pieces)
    assert tok.token_bytes(min(tok.eos_token_ids)) == []
