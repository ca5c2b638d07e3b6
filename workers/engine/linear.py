"""Linear layers with fused epilogues: plain `F.linear`, or oneDNN with prepacked weights on CPU.

Decode on a CPU is bound by reading weights. oneDNN's matmul on a weight prepacked once at load read SmolLM2's
bf16 weights 1.6x faster at batch 1 than `F.linear` on the row-major tensors (13 vs 21 ms a step, measured on
the AVX512-BF16 machine this was written on), and fuses the activation and the residual add into the matmul,
saving a pass over the activations and a Python dispatch each. These are the ops `torch.compile` emits for
CPU linears with freezing on.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

_ONEDNN_ACT = {"gelu_tanh": ("gelu", "tanh")}
_TORCH_ACT = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class Linear(Protocol):
    in_features: int
    out_features: int
    weight_bytes: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """act(x @ W.T + b) for name in gelu_tanh."""

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b + other (the residual)."""


class DenseLinear:
    __slots__ = ("weight", "bias", "in_features", "out_features", "weight_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.contiguous()  # [out, in]
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.weight_bytes = tensor_bytes(weight, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return _TORCH_ACT[name](F.linear(x, self.weight, self.bias))

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias).add_(other)


class PackedLinear:
    """oneDNN matmul on a weight reordered once into its blocked layout (an opaque mkldnn tensor)."""

    __slots__ = ("packed", "bias", "in_features", "out_features", "weight_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        self.weight_bytes = tensor_bytes(weight, bias)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        attr, algorithm = _ONEDNN_ACT[name]
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, attr, [], algorithm)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias, "add")


def onednn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Prepacking pays off for bf16/fp16 on CPUs with native support. fp32 stays on `F.linear` (MKL), the
    kernel transformers uses, so fp32 results can be compared with it token for token."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, packed: bool) -> Linear:
    return PackedLinear(weight, bias) if packed else DenseLinear(weight, bias)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def linear_bytes(*linears: Linear | None) -> int:
    return sum(lin.weight_bytes for lin in linears if lin is not None)
