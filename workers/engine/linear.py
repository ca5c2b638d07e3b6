"""Linear layers with fused epilogues, three ways, picked once at load by `linear_factory`.

- DenseLinear: `F.linear` on the row-major weight. fp32 (MKL, the kernel transformers uses, so fp32 results
  match it token for token) and CUDA.
- PackedLinear: oneDNN on a weight prepacked once at load; bf16/fp16 on CPUs with native support. It read
  SmolLM2's bf16 weights 1.6x faster at batch 1 than `F.linear` (13 vs 21 ms a step on the AVX512-BF16
  machine this was written on), and fuses the activation and the residual add into the matmul. These are
  the ops `torch.compile` emits for CPU linears with freezing on.
- NativeLinear: batch-1 rows through the native bf16 matrix-vector kernel (native_linear.cpp), which streams
  the row-major weight ~1.5x faster still; more rows through its PackedLinear twin. It holds the weight
  twice, in both layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

_ONEDNN_ACT = {"gelu_tanh": ("gelu", "tanh")}
_TORCH_ACT = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class Linear(Protocol):
    in_features: int
    out_features: int
    weight_bytes: int  # held in memory
    read_bytes: int  # read by one call at batch 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """act(x @ W.T + b) for name in gelu_tanh."""

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b + other (the residual)."""

    def shares(self, tensor: torch.Tensor) -> bool:
        """Whether this layer's weight is `tensor` itself (a head tied to the embedding)."""


class DenseLinear:
    __slots__ = ("weight", "bias", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.contiguous()  # [out, in]
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_bytes = self.read_bytes = tensor_bytes(weight, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return _TORCH_ACT[name](F.linear(x, self.weight, self.bias))

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias).add_(other)

    def shares(self, tensor: torch.Tensor) -> bool:
        return self.weight is tensor


class PackedLinear:
    """oneDNN matmul on a weight reordered once into its blocked layout (an opaque mkldnn tensor)."""

    __slots__ = ("packed", "bias", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.weight_bytes = self.read_bytes = tensor_bytes(weight, bias)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        attr, algorithm = _ONEDNN_ACT[name]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], algorithm)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")

    def shares(self, tensor: torch.Tensor) -> bool:
        return False


class NativeLinear:
    __slots__ = ("weight", "bias", "batched", "op", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, op: Any) -> None:
        self.weight = weight.contiguous()  # [out, in] bf16
        self.bias = bias
        self.batched = PackedLinear(self.weight, bias)
        self.op = op  # torch.ops.genie_engine.linear_bf16
        self.out_features, self.in_features = weight.shape
        self.read_bytes = tensor_bytes(weight, bias)
        self.weight_bytes = self.read_bytes + tensor_bytes(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight, self.bias, None, "") if x.shape[0] == 1 else self.batched(x)

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.op(x, self.weight, self.bias, None, name) if x.shape[0] == 1 else self.batched.act(x, name)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight, self.bias, other, "") if x.shape[0] == 1 else self.batched.add(x, other)

    def shares(self, tensor: torch.Tensor) -> bool:
        return self.weight is tensor


def onednn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Prepacking pays off for bf16/fp16 on CPUs with native support; fp32 stays on `F.linear`."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def linear_factory(
    packed: bool, dtype: torch.dtype, native: Any | None
) -> Callable[[torch.Tensor, torch.Tensor | None], Linear]:
    """packed: oneDNN is usable and wanted; native: torch.ops.genie_engine when the native kernels are on."""
    if not packed:
        return DenseLinear
    op = getattr(native, "linear_bf16", None) if native is not None and dtype == torch.bfloat16 else None
    if op is None:
        return PackedLinear
    return lambda weight, bias: NativeLinear(weight, bias, op)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def linear_bytes(*linears: Linear | None, read: bool = False) -> int:
    return sum(lin.read_bytes if read else lin.weight_bytes for lin in linears if lin is not None)
