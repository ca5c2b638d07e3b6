"""Weight-only int8 with one scale per output channel, for the decoder layers' linears (`quantization: int8`).

q[n, k] = round(w[n, k] / s[n]) in [-127, 127] with s[n] = max_k |w[n, k]| / 127, from the checkpoint's own
precision (the fp32 safetensors), so the same file always gives the same bytes. A layer computes
(x @ q.T) * s + bias in the compute dtype's epilogue; activations stay in the compute dtype.

- Int8Linear (where the native kernels build, AVX-512): native_int8.cpp, one kernel for every number of rows
  whose every output sums its products in k order, so a token's result does not depend on its batch. At batch
  1 it reads one byte a weight instead of bf16's two.
- TorchInt8Linear (elsewhere): `torch._weight_int8pack_mm` where torch has it for this dtype and device, else
  a dequantise-then-`F.linear`. torch promises neither to be batch-invariant; on torch 2.13 (CPU, AVX-512)
  `_weight_int8pack_mm` did give a row the same bits alone and among 10 to 70 rows on SmolLM2's shapes.

The registry computes the same q and scales once, at registration or on first serve, as the version's artifact
`quant/int8-v1.safetensors` (registry/quantized.py); quant_artifact.py reads it so a worker need not quantise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from genie.workers.engine.linear import LANES, Linear, tensor_bytes

QMAX = 127  # symmetric: -128 is never used, so -q is always representable
_ACT = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] int8, scale [N] fp32) with weight ~= q * scale[:, None]; an all-zero row
    gets scale 1 (its q is all zero). Rounds half to even, in fp32."""
    w = weight.float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantized_rows(weight: torch.Tensor | Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) of a weight: read from the int8 artifact (a QuantizedWeight, quant_artifact.py) or computed."""
    rows = getattr(weight, "int8_rows", None)
    return rows() if rows is not None else quantize(weight)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale[:, None]).to(dtype)


GROUP = 4 * LANES  # output columns per packed group: four 16-lane vectors, one 64-byte cache line per k


def pack_int8(q: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, K], scale [N]) -> the layout native_int8.cpp reads: ([ceil(N/64), K, 64] int8, [ceil(N/64)*64]
    fp32), 64 output columns per group, all of K contiguous per group; zero rows and scales pad N."""
    n, k = q.shape
    groups = -(-n // GROUP)
    padded = torch.zeros(groups * GROUP, k, dtype=torch.int8)
    padded[:n] = q
    scales = torch.zeros(groups * GROUP, dtype=torch.float32)
    scales[:n] = scale
    return padded.view(groups, GROUP, k).permute(0, 2, 1).contiguous(), scales


class Int8Linear:
    __slots__ = ("packed", "scale", "bias", "op", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, op: Any) -> None:
        self.out_features, self.in_features = weight.shape
        self.packed, self.scale = pack_int8(*quantized_rows(weight))
        self.bias = None if bias is None else bias.float().contiguous()  # the kernel adds it in fp32
        self.op = op  # torch.ops.genie_engine.gemm_int8
        self.weight_bytes = self.read_bytes = tensor_bytes(self.packed, self.scale, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.scale, self.out_features, self.bias, None, "")

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.scale, self.out_features, self.bias, None, name)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.scale, self.out_features, self.bias, other.contiguous(), "")

    def shares(self, tensor: torch.Tensor) -> bool:
        return False


class TorchInt8Linear:
    """int8 weights on torch ops: `_weight_int8pack_mm` (x of the scales' dtype) where it runs, else the weight
    dequantised per call (no bandwidth saved; correct everywhere)."""

    __slots__ = ("q", "scale", "bias", "fused", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.out_features, self.in_features = weight.shape
        q, scale = quantized_rows(weight)
        self.q, self.scale = q.to(weight.device), scale.to(device=weight.device, dtype=dtype)
        self.bias = None if bias is None else bias.to(dtype)
        self.fused = int8pack_usable(self.q.device, dtype)
        self.weight_bytes = self.read_bytes = tensor_bytes(self.q, self.scale, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            y = torch._weight_int8pack_mm(x, self.q, self.scale)
            return y if self.bias is None else y.add_(self.bias)
        return F.linear(x, dequantize(self.q, self.scale, x.dtype), self.bias)

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return _ACT[name](self(x))

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self(x).add_(other)

    def shares(self, tensor: torch.Tensor) -> bool:
        return False


def int8pack_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch has `_weight_int8pack_mm` for x of this dtype on this device (it wants 2-D x and a
    scale of x's dtype; probed once per call site on a tiny shape)."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        x = torch.zeros(1, 32, dtype=dtype, device=device)
        torch._weight_int8pack_mm(x, torch.zeros(16, 32, dtype=torch.int8, device=device),
                                  torch.ones(16, dtype=dtype, device=device))
    except (RuntimeError, NotImplementedError):
        return False
    return True


def int8_factory(dtype: torch.dtype, native: Any | None) -> Callable[[torch.Tensor, torch.Tensor | None], Linear]:
    """Builds the decoder layers' linears from their fp32 checkpoint weights [out, in]: the native kernel where
    it is built (AVX-512), else torch ops in `dtype`."""
    op = getattr(native, "gemm_int8", None) if native is not None else None
    if op is not None and dtype in (torch.bfloat16, torch.float32):
        return lambda weight, bias: Int8Linear(weight, bias, op)
    return lambda weight, bias: TorchInt8Linear(weight, bias, dtype)
