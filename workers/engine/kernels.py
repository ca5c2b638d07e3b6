"""The two ways a fragment runs everything but its matmuls (norms, SiLU-and-multiply, RoPE, KV cache writes,
attention, argmax): plain torch ops, or the fused native CPU kernels.

`attend` takes the fused projection `qkv` [T, (heads + 2 * kv_heads) * D] (q heads | k heads | v heads), rotate
q and k when the family uses RoPE, store k and v in the paged cache, and attend, returning [T, heads * D].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from genie.errors import InvalidRequest
from genie.workers.engine.attention import decode_attention, grouped_attention, write_kv
from genie.workers.engine.batch import AttnBatch, DecodeGroup
from genie.workers.engine.rope import Rope

log = logging.getLogger(__name__)

KERNEL_CHOICES = ("torch", "native", "auto")


@dataclass(frozen=True, slots=True)
class HeadShape:
    heads: int
    kv_heads: int
    dim: int


class Kernels(Protocol):
    name: str
    # torch.ops.genie_engine.llama_layer where it runs (native kernels built with AVX-512), else None; and whether
    # LlamaLayer calls it (False runs the same kernels one call each: the reference that it gives the same bits)
    fused_layer: Any
    fuse_layers: bool

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor: ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2 * I] (gate | up) -> silu(gate) * up, [T, I]."""

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """[S, vocab] -> [S] long, the first index of each row's maximum."""

    def rope_step(self, rope: Rope, batch: AttnBatch) -> Any:
        """What `attend` needs of the RoPE tables for this step; computed once per step, not per layer."""

    def attend(
        self, qkv: torch.Tensor, shape: HeadShape, rotary: Any, batch: AttnBatch, caches: tuple, scale: float
    ) -> torch.Tensor: ...


class TorchKernels:
    name = "torch"
    per_token = False  # attention runs per group (batched decode, SDPA per prefill chunk): not batch-invariant
    fused_layer = None
    fuse_layers = False

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().argmax(dim=-1)  # ATen's argmax is several times slower on bf16 than on fp32

    def rope_step(self, rope: Rope, batch: AttnBatch) -> tuple[Rope, tuple[torch.Tensor, torch.Tensor]]:
        return rope, rope.tables(batch.positions)

    def attend(
        self, qkv: torch.Tensor, shape: HeadShape, rotary: Any, batch: AttnBatch, caches: tuple, scale: float
    ) -> torch.Tensor:
        heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.dim
        tokens, qk_width = qkv.shape[0], (heads + kv_heads) * dim
        qk = qkv[:, :qk_width].view(tokens, heads + kv_heads, dim)
        if rotary is not None:
            rope, tables = rotary
            qk = rope.apply(qk, *tables)
        write_kv(qk[:, heads:], qkv[:, qk_width:].view(tokens, kv_heads, dim), *caches, batch.slots)
        return grouped_attention(qk[:, :heads], *caches, batch, scale, decode_attention)


class NativeKernels:
    """torch.ops.genie_engine (native_kernels.cpp): one call each for RMSNorm, SiLU-and-multiply, RoPE + cache
    write, attention straight from the paged cache, and argmax.

    per_token (batch-invariant): every token, decode or prefill, attends through the same paged kernel as a
    query of its own, whose sums run over its keys in position order; so a token's attention is the same bits
    whatever else is in the step and however its prompt was chunked. Otherwise prefill chunks use SDPA."""

    name = "native"

    def __init__(self, ops: Any, per_token: bool = False) -> None:
        self.ops = ops
        self.per_token = per_token
        self.fused_layer = getattr(ops, "llama_layer", None)
        self.fuse_layers = self.fused_layer is not None

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self.ops.rms_norm(x, weight, eps)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_mul(gate_up)

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return self.ops.argmax_rows(logits)

    def rope_step(self, rope: Rope, batch: AttnBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return rope.cos32, rope.sin32

    def attend(
        self, qkv: torch.Tensor, shape: HeadShape, rotary: Any, batch: AttnBatch, caches: tuple, scale: float
    ) -> torch.Tensor:
        cos, sin = rotary if rotary is not None else (None, None)
        key_cache, value_cache = caches
        self.ops.rope_kv_write(
            qkv, cos, sin, batch.positions, batch.slots, key_cache, value_cache, shape.heads, shape.kv_heads
        )
        q = qkv[:, : shape.heads * shape.dim].view(qkv.shape[0], shape.heads, shape.dim)
        if batch.rows is not None:
            rows = batch.rows
            return self.ops.paged_decode_attention(q, key_cache, value_cache, rows.tables, rows.lens,
                                                   rows.block_size, scale)
        return grouped_attention(q, key_cache, value_cache, batch, scale, self._decode)

    def decoder_layer(
        self, x: torch.Tensor, weights: tuple, rotary: Any, batch: AttnBatch, caches: tuple, shape: HeadShape,
        scale: float,
    ) -> torch.Tensor:
        """A whole Llama decoder layer in one call (native_layer.cpp) on a token-by-token batch (`batch.rows`);
        weights: LlamaLayer's norms and packed invariant linears, in the op's order."""
        cos, sin = rotary if rotary is not None else (None, None)
        rows = batch.rows
        return self.fused_layer(x, *weights, cos, sin, batch.positions, batch.slots, *caches, rows.tables, rows.lens,
                                rows.block_size, shape.heads, shape.kv_heads, scale)

    def _decode(
        self, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, g: DecodeGroup, scale: float
    ) -> torch.Tensor:
        return self.ops.paged_decode_attention(q, key_cache, value_cache, g.tables, g.lens, g.block_size, scale)


def make_kernels(choice: str, device: torch.device) -> Kernels:
    """"torch"; "native" (fails with the reason if the kernels cannot be built); "auto": native on CPU when
    they build, else torch."""
    from genie.workers.engine.native import native_ops

    if choice not in KERNEL_CHOICES:
        raise InvalidRequest(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "torch" or (choice == "auto" and device.type != "cpu"):
        return TorchKernels()
    try:
        return NativeKernels(native_ops(device))
    except InvalidRequest as exc:
        if choice == "native":
            raise
        log.warning("native kernels unavailable, running on torch ops: %s", exc)
        return TorchKernels()
