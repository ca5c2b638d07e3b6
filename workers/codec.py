"""Protobuf <-> engine dataclasses, at the edge of the worker service.

Tensors travel as dtype name + shape + raw little-endian bytes in row-major order; bfloat16 travels as its raw
2-byte pattern. Nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from genie.errors import InvalidRequest
from genie.protos import worker_pb2 as pb
from genie.workers.blind import BlindSeqResult, BlindSeqStep
from genie.workers.sampling_codec import sampling_from_pb, sampling_from_wire, sampling_to_pb, shared_sampling_pb
from genie.workers.contract import (
    FRAGMENT_KINDS,
    LLM,
    QUANTIZATIONS,
    STATELESS,
    FragmentInfo,
    FragmentSpec,
    FragmentStats,
    SamplingParams,
    SeqResult,
    SeqStep,
    TensorSpec,
)

# The wire is little-endian; torch.frombuffer and .numpy() use the host's byte order.
assert sys.byteorder == "little", "genie workers need a little-endian host"

M = TypeVar("M")
D = TypeVar("D")

MAX_MESSAGE_BYTES = 256 << 20  # gRPC message cap on both ends; a long prefill's hidden states travel in one

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def tensor_to_pb(tensor: torch.Tensor) -> pb.Tensor:
    name = DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise InvalidRequest(f"tensors of dtype {tensor.dtype} cannot travel; use one of {sorted(DTYPES)}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # Viewing as bytes keeps bfloat16's bit pattern; numpy has no bfloat16 of its own.
    data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    return pb.Tensor(dtype=name, shape=list(tensor.shape), data=data)


def tensor_from_pb(msg: pb.Tensor, what: str = "tensor") -> torch.Tensor:
    """Decodes a wire tensor into a fresh CPU tensor; `what` names it in error messages."""
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise InvalidRequest(f"{what} has unknown dtype {msg.dtype!r}; use one of {sorted(DTYPES)}")
    shape = list(msg.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidRequest(f"{what} has a negative dimension in shape {shape}")
    numel = math.prod(shape)
    expected = numel * dtype.itemsize
    if len(msg.data) != expected:
        raise InvalidRequest(
            f"{what} carries {len(msg.data)} bytes but shape {shape} of {msg.dtype} needs {expected}"
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)


def spec_to_pb(spec: FragmentSpec) -> pb.LoadFragmentRequest:
    return pb.LoadFragmentRequest(
        fragment_id=spec.fragment_id,
        model_dir=spec.model_dir,
        layer_start=spec.layer_start,
        layer_end=spec.layer_end,
        has_embedding=spec.has_embedding,
        has_head=spec.has_head,
        dtype=spec.dtype,
        kv_cache_bytes=spec.kv_cache_bytes,
        block_size=spec.block_size,
        expected_sha256=dict(spec.expected_sha256),
        kind=spec.kind,
        pooling=spec.pooling,
        normalize=spec.normalize,
        part=spec.part,
        cut=list(spec.cut),
        quantization=spec.quantization,
    )


def spec_from_pb(msg: pb.LoadFragmentRequest, default_kv_bytes: int | None = None) -> FragmentSpec:
    """Zero kv_cache_bytes / block_size and an empty dtype take the defaults."""
    if not msg.fragment_id:
        raise InvalidRequest("LoadFragment needs a fragment_id")
    if not msg.model_dir:
        raise InvalidRequest(f"LoadFragment {msg.fragment_id!r} needs a model_dir")
    if msg.kv_cache_bytes < 0 or msg.block_size < 0:
        raise InvalidRequest(
            f"fragment {msg.fragment_id!r}: kv_cache_bytes ({msg.kv_cache_bytes}) and block_size "
            f"({msg.block_size}) must be >= 0 (0 takes the default)"
        )
    kind = msg.kind or LLM
    if kind not in FRAGMENT_KINDS:
        raise InvalidRequest(
            f"fragment {msg.fragment_id!r}: kind {msg.kind!r} is unknown; use one of {', '.join(FRAGMENT_KINDS)}"
        )
    if (msg.part or msg.cut) and kind != STATELESS:
        raise InvalidRequest(f"fragment {msg.fragment_id!r}: part and cut apply to kind 'stateless' only, not {kind!r}")
    if (msg.pooling or msg.normalize) and kind != STATELESS:
        raise InvalidRequest(
            f"fragment {msg.fragment_id!r}: pooling and normalize apply to kind 'stateless' only, not {kind!r}"
        )
    quantization = msg.quantization or "none"
    if quantization not in QUANTIZATIONS or (quantization != "none" and kind != LLM):
        raise InvalidRequest(
            f"fragment {msg.fragment_id!r}: quantization {msg.quantization!r} is not one of "
            f"{', '.join(QUANTIZATIONS)} for kind {kind!r} (only 'llm' fragments quantise)"
        )
    defaults = FragmentSpec(fragment_id=msg.fragment_id, model_dir=msg.model_dir)
    return FragmentSpec(
        fragment_id=msg.fragment_id,
        model_dir=msg.model_dir,
        layer_start=msg.layer_start,
        layer_end=msg.layer_end,
        has_embedding=msg.has_embedding,
        has_head=msg.has_head,
        dtype=msg.dtype or defaults.dtype,
        kv_cache_bytes=msg.kv_cache_bytes or default_kv_bytes or defaults.kv_cache_bytes,
        block_size=msg.block_size or defaults.block_size,
        expected_sha256=tuple(sorted(msg.expected_sha256.items())),
        kind=kind,
        pooling=msg.pooling,
        normalize=msg.normalize,
        part=msg.part,
        cut=tuple(msg.cut),
        quantization=quantization,
    )


def seq_step_to_pb(step: SeqStep) -> pb.SeqStep:
    msg = pb.SeqStep(
        seq_id=step.seq_id,
        position=step.position,
        token_ids=step.token_ids or [],
        sample=step.sample,
        sampling=shared_sampling_pb(step.sampling),
        cached_prefix=step.cached_prefix,
        new_block_hashes=step.new_block_hashes,
    )
    if step.hidden is not None:
        msg.hidden.CopyFrom(tensor_to_pb(step.hidden))
    if isinstance(step, BlindSeqStep):
        msg.return_kv = step.return_kv
        if step.kv is not None:
            msg.kv.CopyFrom(tensor_to_pb(step.kv))
    return msg


def _optional_tensor(msg: pb.SeqStep | pb.SeqResult, name: str) -> torch.Tensor | None:
    if not msg.HasField(name):
        return None
    return tensor_from_pb(getattr(msg, name), f"{name} of sequence {msg.seq_id!r}")


def seq_step_from_pb(msg: pb.SeqStep) -> SeqStep:
    # Keywords, not a dict of fields: this runs for every sequence of every step.
    cls, blind = (BlindSeqStep, True) if msg.HasField("kv") or msg.return_kv else (SeqStep, False)
    step = cls(
        seq_id=msg.seq_id,
        position=msg.position,
        token_ids=list(msg.token_ids) if msg.token_ids else None,
        hidden=_optional_tensor(msg, "hidden"),
        sample=msg.sample,
        sampling=sampling_from_wire(msg.sampling),
        cached_prefix=tuple(msg.cached_prefix),
        new_block_hashes=tuple(msg.new_block_hashes),
    )
    if blind:  # only the semantic-blind baseline sends these
        step.kv, step.return_kv = _optional_tensor(msg, "kv"), msg.return_kv
    return step


def seq_result_to_pb(result: SeqResult) -> pb.SeqResult:
    msg = pb.SeqResult(seq_id=result.seq_id, token_id=result.token_id or 0, sampled=result.token_id is not None)
    if result.logprob is not None:
        msg.logprob = result.logprob
    if result.top:
        msg.top_token_ids.extend([token for token, _ in result.top])
        msg.top_logprobs.extend([logprob for _, logprob in result.top])
    if result.hidden is not None:
        msg.hidden.CopyFrom(tensor_to_pb(result.hidden))
    if isinstance(result, BlindSeqResult) and result.kv is not None:
        msg.kv.CopyFrom(tensor_to_pb(result.kv))
    return msg


def seq_result_from_pb(msg: pb.SeqResult) -> SeqResult:
    sampled = msg.sampled
    top = list(zip(msg.top_token_ids, msg.top_logprobs, strict=True)) if msg.top_token_ids or msg.top_logprobs else []
    hidden = _optional_tensor(msg, "hidden")
    logprob = msg.logprob if sampled and top else None
    token_id = msg.token_id if sampled else None
    if msg.HasField("kv"):
        return BlindSeqResult(msg.seq_id, token_id, logprob, top, hidden, kv=_optional_tensor(msg, "kv"))
    return SeqResult(msg.seq_id, token_id, logprob, top, hidden)


def named_tensors_to_pb(tensors: dict[str, torch.Tensor], into: Any) -> None:
    """Fills a map<string, Tensor> field (`into`) from a dict of tensors."""
    for name, tensor in tensors.items():
        into[name].CopyFrom(tensor_to_pb(tensor))


def named_tensors_from_pb(msgs: Any, what: str) -> dict[str, torch.Tensor]:
    """A map<string, Tensor> field -> fresh CPU tensors by name; `what` prefixes each tensor's name in errors."""
    return {name: tensor_from_pb(msg, f"{what} {name!r}") for name, msg in msgs.items()}


_SPEC_LISTS = ("inputs", "outputs")


def fragment_info_to_pb(info: FragmentInfo) -> pb.LoadFragmentResponse:
    scalars = {f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name not in _SPEC_LISTS}
    msg = pb.LoadFragmentResponse(**scalars)
    for name in _SPEC_LISTS:
        getattr(msg, name).extend(
            pb.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape), optional=not t.required)
            for t in getattr(info, name)
        )
    return msg


def fragment_info_from_pb(msg: pb.LoadFragmentResponse) -> FragmentInfo:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(FragmentInfo) if f.name not in _SPEC_LISTS}
    fields["kind"] = msg.kind or LLM  # a worker from before stateless fragments sends no kind
    lists = {name: tuple(_spec_from_pb(t) for t in getattr(msg, name)) for name in _SPEC_LISTS}
    return FragmentInfo(**fields, **lists)


def _spec_from_pb(msg: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(msg.name, msg.dtype, tuple(msg.shape), required=not msg.optional)


def fragment_stats_to_pb(stats: FragmentStats) -> pb.FragmentStats:
    return _flat_to_pb(stats, pb.FragmentStats)


def fragment_stats_from_pb(msg: pb.FragmentStats) -> FragmentStats:
    return _flat_from_pb(msg, FragmentStats)


def _flat_to_pb(obj: Any, message: type[M]) -> M:
    """A dataclass of scalars -> the message whose fields have the same names (a test pins the pairs)."""
    return message(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def _flat_from_pb(msg: Any, cls: type[D]) -> D:
    return cls(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker says about itself: its device, measured speed and loaded fragments."""

    device: str  # "cpu", "cuda:0"
    device_name: str
    memory_total_bytes: int
    memory_free_bytes: int
    bandwidth_gbps: float  # measured at start-up
    tflops: float  # matmul TFLOP/s in the default dtype, measured at start-up
    capabilities: tuple[str, ...]
    fragments: tuple[str, ...]
    version: str
    op_us: float = 0.0  # dispatch per tensor op, measured at start-up
    module_us: float = 0.0  # per nn.Module call beyond its ops, measured at start-up
    call_us: float = 0.0  # once per forward that follows a pause (cold caches), measured at start-up


def worker_info_to_pb(info: WorkerInfo) -> pb.InfoResponse:
    return pb.InfoResponse(
        device=info.device,
        device_name=info.device_name,
        memory_total_bytes=info.memory_total_bytes,
        memory_free_bytes=info.memory_free_bytes,
        measured_bandwidth_gbps=info.bandwidth_gbps,
        measured_tflops=info.tflops,
        capabilities=list(info.capabilities),
        fragments=list(info.fragments),
        version=info.version,
        measured_op_us=info.op_us,
        measured_module_us=info.module_us,
        measured_call_us=info.call_us,
    )


def worker_info_from_pb(msg: pb.InfoResponse) -> WorkerInfo:
    return WorkerInfo(
        device=msg.device,
        device_name=msg.device_name,
        memory_total_bytes=msg.memory_total_bytes,
        memory_free_bytes=msg.memory_free_bytes,
        bandwidth_gbps=msg.measured_bandwidth_gbps,
        tflops=msg.measured_tflops,
        capabilities=tuple(msg.capabilities),
        fragments=tuple(msg.fragments),
        version=msg.version,
        op_us=msg.measured_op_us,
        module_us=msg.measured_module_us,
        call_us=msg.measured_call_us,
    )


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """KV usage per fragment and the worker's Step and Infer traffic since it started."""

    fragments: tuple[FragmentStats, ...]
    steps: int  # Step and Infer calls
    tokens: int  # LLM tokens stepped
    bytes_received: int  # serialized Step and Infer request bytes
    bytes_sent: int  # serialized Step and Infer response bytes
    handoff_bytes_sent: int = 0  # KV sent to other workers (SendKV)
    handoff_bytes_received: int = 0  # KV taken from other workers (ImportKV)
    fragments_loaded: int = 0  # LoadFragment calls that loaded weights (reused fragments are not counted)

    def fragment(self, fragment_id: str) -> FragmentStats:
        for stats in self.fragments:
            if stats.fragment_id == fragment_id:
                return stats
        raise KeyError(fragment_id)


def worker_stats_to_pb(stats: WorkerStats) -> pb.StatsResponse:
    return pb.StatsResponse(
        fragments=[fragment_stats_to_pb(f) for f in stats.fragments],
        steps=stats.steps,
        tokens=stats.tokens,
        bytes_received=stats.bytes_received,
        bytes_sent=stats.bytes_sent,
        handoff_bytes_sent=stats.handoff_bytes_sent,
        handoff_bytes_received=stats.handoff_bytes_received,
        fragments_loaded=stats.fragments_loaded,
    )


def worker_stats_from_pb(msg: pb.StatsResponse) -> WorkerStats:
    return WorkerStats(
        fragments=tuple(fragment_stats_from_pb(f) for f in msg.fragments),
        steps=msg.steps,
        tokens=msg.tokens,
        bytes_received=msg.bytes_received,
        bytes_sent=msg.bytes_sent,
        handoff_bytes_sent=msg.handoff_bytes_sent,
        handoff_bytes_received=msg.handoff_bytes_received,
        fragments_loaded=msg.fragments_loaded,
    )
