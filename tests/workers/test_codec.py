"""Protobuf <-> dataclass conversion: tensors byte for byte, and every message round trip."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.protos import worker_pb2 as pb
from genie.workers import codec
from genie.workers.contract import (
    FragmentInfo,
    FragmentSpec,
    FragmentStats,
    SamplingParams,
    SeqResult,
    SeqStep,
)


@pytest.mark.parametrize("dtype", list(codec.DTYPES.values()), ids=list(codec.DTYPES))
def test_tensor_round_trip_is_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    source = (torch.randn(3, 5) * 50).to(dtype)
    back = codec.tensor_from_pb(codec.tensor_to_pb(source))
    assert back.dtype == dtype and back.shape == source.shape
    assert torch.equal(back, source)


def test_bfloat16_travels_as_its_raw_two_byte_pattern() -> None:
    source = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    msg = codec.tensor_to_pb(source)
    assert msg.dtype == "bfloat16" and list(msg.shape) == [3]
    assert msg.data == source.view(torch.int16).numpy().astype("<i2").tobytes()
    assert len(msg.data) == 6


def test_float32_bytes_are_little_endian_row_major() -> None:
    msg = codec.tensor_to_pb(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    import numpy as np

    assert msg.data == np.array([1, 2, 3, 4], dtype="<f4").tobytes()


def test_non_contiguous_and_empty_tensors() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert torch.equal(codec.tensor_from_pb(codec.tensor_to_pb(t)), t)
    empty = codec.tensor_from_pb(codec.tensor_to_pb(torch.empty(0, 64)))
    assert empty.shape == (0, 64)


def test_decoded_tensor_is_writable_and_independent_of_the_message() -> None:
    msg = codec.tensor_to_pb(torch.zeros(4))
    t = codec.tensor_from_pb(msg)
    t += 1
    assert torch.equal(codec.tensor_from_pb(msg), torch.zeros(4))


def test_unknown_dtype_is_rejected_with_the_known_names() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown dtype 'float8'.*float32"):
        codec.tensor_from_pb(pb.Tensor(dtype="float8", shape=[1], data=b"\0"))


def test_byte_length_must_match_shape_and_dtype() -> None:
    msg = codec.tensor_to_pb(torch.zeros(2, 3))
    msg.shape[:] = [2, 4]
    with pytest.raises(InvalidRequest, match=r"carries 24 bytes but shape \[2, 4\] of float32 needs 32"):
        codec.tensor_from_pb(msg, "hidden")
    with pytest.raises(InvalidRequest, match="negative dimension"):
        codec.tensor_from_pb(pb.Tensor(dtype="float32", shape=[-1, 6], data=bytes(24)))


def test_unsupported_tensor_dtype_cannot_be_sent() -> None:
    with pytest.raises(InvalidRequest, match="cannot travel"):
        codec.tensor_to_pb(torch.zeros(2, dtype=torch.complex64))


def test_sampling_params_round_trip_and_proto_defaults() -> None:
    params = SamplingParams(temperature=0.75, top_k=40, top_p=0.875, seed=123, logprobs=3)  # exact in float32
    assert codec.sampling_from_pb(codec.sampling_to_pb(params)) == params
    unseeded = SamplingParams(temperature=1.0, seed=None)
    assert codec.sampling_from_pb(codec.sampling_to_pb(unseeded)).seed is None
    zero_seed = SamplingParams(seed=0)
    assert codec.sampling_from_pb(codec.sampling_to_pb(zero_seed)).seed == 0
    # An empty message means greedy with top_p disabled, not top_p = 0.
    assert codec.sampling_from_pb(pb.SamplingParams()) == SamplingParams()


def test_fragment_spec_round_trip_and_defaults() -> None:
    spec = FragmentSpec("f1", "/models/x", 2, 7, False, True, "bfloat16", 1 << 20, 32,
                        (("config.json", "ab" * 32), ("model.safetensors", "cd" * 32)))
    assert codec.spec_from_pb(codec.spec_to_pb(spec)) == spec
    assert spec in {spec}  # frozen and hashable, expected hashes included
    bare = codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m", layer_end=-1))
    assert bare.dtype == "auto" and bare.layer_end == -1
    assert bare.kv_cache_bytes == FragmentSpec("f", "/m").kv_cache_bytes and bare.block_size == 16
    worker_default = codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m"), 4096)
    assert worker_default.kv_cache_bytes == 4096


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"model_dir": "/m"}, "needs a fragment_id"),
        ({"fragment_id": "f"}, "needs a model_dir"),
        ({"fragment_id": "f", "model_dir": "/m", "kv_cache_bytes": -5}, "must be >= 0"),
    ],
)
def test_fragment_spec_rejects_bad_requests(request_fields: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        codec.spec_from_pb(pb.LoadFragmentRequest(**request_fields))


def test_seq_step_round_trip_with_tokens_and_with_hidden() -> None:
    tokens = SeqStep("a", 0, token_ids=[1, 2, 3], sample=True, sampling=SamplingParams(top_k=5))
    back = codec.seq_step_from_pb(codec.seq_step_to_pb(tokens))
    assert (back.seq_id, back.position, back.token_ids, back.hidden, back.sample) == ("a", 0, [1, 2, 3], None, True)
    assert back.sampling == tokens.sampling

    hidden = torch.randn(4, 8)
    back = codec.seq_step_from_pb(codec.seq_step_to_pb(SeqStep("b", 9, hidden=hidden)))
    assert back.token_ids is None and back.position == 9 and back.num_tokens == 4
    assert torch.equal(back.hidden, hidden)


def test_seq_step_with_bad_hidden_names_the_sequence() -> None:
    msg = codec.seq_step_to_pb(SeqStep("seq-7", 0, hidden=torch.zeros(2, 4)))
    msg.hidden.data = msg.hidden.data[:-1]
    with pytest.raises(InvalidRequest, match="hidden of sequence 'seq-7'"):
        codec.seq_step_from_pb(msg)


def test_seq_result_round_trip() -> None:
    sampled = SeqResult("a", token_id=0, logprob=-0.25, top=[(0, -0.25), (7, -1.5)])
    back = codec.seq_result_from_pb(codec.seq_result_to_pb(sampled))
    assert (back.token_id, back.logprob, back.top, back.hidden) == (0, -0.25, [(0, -0.25), (7, -1.5)], None)

    plain = codec.seq_result_from_pb(codec.seq_result_to_pb(SeqResult("b", token_id=42)))
    assert plain.token_id == 42 and plain.logprob is None and plain.top == []

    hidden = torch.randn(3, 16, dtype=torch.bfloat16)
    back = codec.seq_result_from_pb(codec.seq_result_to_pb(SeqResult("c", hidden=hidden)))
    assert back.token_id is None and torch.equal(back.hidden, hidden)


def test_fragment_info_and_stats_round_trip() -> None:
    info = FragmentInfo("f", 30, 512, 16, 1 << 28, 576, 49152, 8192, "float32")
    assert codec.fragment_info_from_pb(codec.fragment_info_to_pb(info)) == info
    stats = FragmentStats("f", 512, 10, 502, 3, 16)
    assert codec.fragment_stats_from_pb(codec.fragment_stats_to_pb(stats)) == stats
    worker = codec.WorkerStats((stats,), steps=5, tokens=100, bytes_received=1000, bytes_sent=2000)
    assert codec.worker_stats_from_pb(codec.worker_stats_to_pb(worker)) == worker
    assert worker.fragment("f") == stats


def test_worker_info_round_trip() -> None:
    info = codec.WorkerInfo("cpu", "EPYC", 1 << 34, 1 << 33, 40.5, 0.2, ("llm.decoder",), ("a", "b"), "0.1.0")
    assert codec.worker_info_from_pb(codec.worker_info_to_pb(info)) == info
