"""Tensors on the wire for the client: raw little-endian bytes + dtype + shape (worker.proto's Tensor), never
pickle. The worker decodes them with genie.workers.codec; the client does not import the worker package."""

from __future__ import annotations

import hashlib
import math

import torch

from genie.protos import worker_pb2 as pb

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool",
}
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def to_pb(tensor: torch.Tensor, data: bytes | None = None) -> pb.Tensor:
    """`data`: the tensor's raw bytes when the caller has them already (it hashed them)."""
    name = DTYPE_NAMES.get(tensor.dtype)
    if name is None:
        raise TypeError(f"tensors of dtype {tensor.dtype} cannot travel to a genie worker")
    return pb.Tensor(dtype=name, shape=list(tensor.shape), data=raw_bytes(tensor) if data is None else data)


def from_pb(msg: pb.Tensor) -> torch.Tensor:
    dtype = DTYPES[msg.dtype]
    shape = list(msg.shape)
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
