"""The stateless parts of the worker codec: named tensors, kinds, tensor specs and batch stats on the wire."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.protos import worker_pb2 as pb
from genie.workers import codec
from genie.workers.codec import WorkerStats
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats, TensorSpec


def test_named_tensors_round_trip_bit_for_bit() -> None:
    tensors = {
        "input_ids": torch.randint(0, 30000, (4, 9)),
        "attention_mask": torch.ones(4, 9, dtype=torch.int32),
        "pixel_values": torch.randn(2, 3, 8, 8, dtype=torch.bfloat16),
        "empty": torch.empty(0, 5),
        "mask": torch.tensor([[True, False]]),
    }
    request = pb.InferRequest(fragment_id="f")
    codec.named_tensors_to_pb(tensors, request.inputs)
    back = codec.named_tensors_from_pb(pb.InferRequest.FromString(request.SerializeToString()).inputs, "input")
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor)


def test_a_bad_named_tensor_is_refused_by_its_name() -> None:
    request = pb.InferRequest(fragment_id="f")
    request.inputs["input_ids"].CopyFrom(pb.Tensor(dtype="int64", shape=[2, 3], data=b"\0" * 8))
    with pytest.raises(InvalidRequest, match="input 'input_ids' carries 8 bytes"):
        codec.named_tensors_from_pb(request.inputs, "input")


def test_stateless_spec_round_trips_and_empty_kind_means_llm() -> None:
    verified = (("model.safetensors", "ab"),)
    spec = FragmentSpec("enc", "/m", dtype="float32", kind="stateless", expected_sha256=verified)
    back = codec.spec_from_pb(codec.spec_to_pb(spec))
    assert back.kind == "stateless" and back.expected_sha256 == spec.expected_sha256
    assert codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m")).kind == "llm"


def test_an_unknown_kind_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidRequest, match="kind 'encoder' is unknown; use one of llm, stateless"):
        codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m", kind="encoder"))


def test_fragment_info_carries_input_and_output_specs() -> None:
    info = FragmentInfo(
        "enc", 0, 0, 0, 1 << 20, 384, 30522, 512, "float32", kind="stateless",
        inputs=(TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1))),
        outputs=(TensorSpec("last_hidden_state", "float32", (-1, -1, 384)),),
    )
    wire = pb.LoadFragmentResponse.FromString(codec.fragment_info_to_pb(info).SerializeToString())
    assert codec.fragment_info_from_pb(wire) == info


def test_an_llm_fragment_info_is_unchanged_and_kindless_means_llm() -> None:
    info = FragmentInfo("f", 30, 512, 16, 1 << 28, 576, 49152, 8192, "float32")
    assert codec.fragment_info_from_pb(codec.fragment_info_to_pb(info)) == info
    old = codec.fragment_info_to_pb(info)
    old.ClearField("kind")  # what a worker from before stateless fragments sends
    assert codec.fragment_info_from_pb(old).kind == "llm"


def test_batch_stats_round_trip() -> None:
    stats = WorkerStats(fragments=(FragmentStats("enc", 0, 0, 0, 0, 0, batches=7, max_batch=32),), steps=7,
                        tokens=0, bytes_received=10, bytes_sent=20)
    assert codec.worker_stats_from_pb(codec.worker_stats_to_pb(stats)) == stats


def test_pooling_and_normalize_round_trip_and_default_to_none() -> None:
    spec = FragmentSpec("enc", "/m", kind="stateless", pooling="mean", normalize=True)
    wire = pb.LoadFragmentRequest.FromString(codec.spec_to_pb(spec).SerializeToString())
    assert (wire.pooling, wire.normalize) == ("mean", True)
    assert codec.spec_from_pb(wire) == spec
    plain = codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m", kind="stateless"))
    assert (plain.pooling, plain.normalize) == ("", False)


@pytest.mark.parametrize("fields", [{"pooling": "mean"}, {"normalize": True}])
def test_pooling_on_an_llm_fragment_is_refused(fields: dict) -> None:
    with pytest.raises(InvalidRequest, match="pooling and normalize apply to kind 'stateless' only, not 'llm'"):
        codec.spec_from_pb(pb.LoadFragmentRequest(fragment_id="f", model_dir="/m", **fields))
