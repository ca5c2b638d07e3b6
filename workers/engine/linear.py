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
- InvariantLinear (the default where the native kernels build): one native kernel for every number of rows
  (native_gemm.cpp), bf16 or fp32, whose every output sums its products in k order whatever the rows around
  it, so a token's result does not depend on its batch. It holds the weight once, packed.
"""

from __future__ import annotations

import weakref
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


LANES = 16  # output columns per packed block (one AVX-512 vector of fp32)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[N, K] -> the layout native_gemm.cpp reads: [ceil(N/16), K, 16] (fp32) or [ceil(N/16), K/2, 16, 2]
    (bf16, K even): 16 output columns across the lanes, all of K contiguous per block; zero rows pad N."""
    n, k = weight.shape
    blocks = -(-n // LANES)
    padded = torch.zeros(blocks * LANES, k, dtype=weight.dtype, device=weight.device)
    padded[:n] = weight
    if weight.dtype == torch.bfloat16:
        return padded.view(blocks, LANES, k // 2, 2).permute(0, 2, 1, 3).contiguous()
    return padded.view(blocks, LANES, k).permute(0, 2, 1).contiguous()


class InvariantLinear:
    __slots__ = ("packed", "bias", "source", "op", "in_features", "out_features", "weight_bytes", "read_bytes")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, op: Any) -> None:
        self.out_features, self.in_features = weight.shape
        self.packed = pack_weight(weight.contiguous())
        self.bias = None if bias is None else bias.float().contiguous()  # the kernel adds it in fp32
        self.source = weakref.ref(weight)  # only to answer shares(): the packed copy is what is held
        self.op = op  # torch.ops.genie_engine.gemm_bf16 or gemm_fp32
        self.weight_bytes = self.read_bytes = tensor_bytes(self.packed, bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.out_features, self.bias, None, "")

    def act(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.out_features, self.bias, None, name)

    def add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.op(x.contiguous(), self.packed, self.out_features, self.bias, other.contiguous(), "")

    def shares(self, tensor: torch.Tensor) -> bool:
        return self.source() is tensor


def invariant_op(native: Any | None, dtype: torch.dtype) -> Any | None:
    """The batch-invariant matmul for dtype, where the native kernels have it (AVX-512; bf16 needs BF16)."""
    if native is None:
        return None
    name = {torch.bfloat16: "gemm_bf16", torch.float32: "gemm_fp32"}.get(dtype)
    return getattr(native, name, None) if name else None


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
    packed: bool, dtype: torch.dtype, native: Any | None, invariant: bool = False
) -> Callable[[torch.Tensor, torch.Tensor | None], Linear]:
    """packed: oneDNN is usable and wanted; native: torch.ops.genie_engine when the native kernels are on;
    invariant: InvariantLinear wherever it runs (callers check `invariant_op` first)."""
    op = invariant_op(native, dtype) if invariant else None
    if op is not None:
        odd = DenseLinear if not packed else PackedLinear
        # bf16 pairs k two by two: an odd K (no model family here has one) keeps the batch-dependent kernel
        return lambda weight, bias: (InvariantLinear(weight, bias, op)
                                     if dtype != torch.bfloat16 or weight.shape[1] % 2 == 0 else odd(weight, bias))
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
