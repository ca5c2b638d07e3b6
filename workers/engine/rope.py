"""Rotary position embeddings with cos/sin precomputed for every position at load.

The inverse frequencies come from transformers' own RoPE functions, so scaled variants (linear, llama3, yarn)
match the reference exactly. Variants that depend on the running sequence length (dynamic, longrope) would
change the cached keys as a sequence grows; they are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from genie.errors import InvalidRequest

_STATIC_TYPES = ("default", "linear", "llama3", "yarn")


class Rope:
    def __init__(self, config: Any, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device):
        inv_freq, scaling = _inv_freq(config, head_dim)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # [positions, D], as transformers lays it out
        half = head_dim // 2
        sin = emb.sin() * scaling
        cos = emb.cos() * scaling
        self.cos32, self.sin32 = cos.to(device), sin.to(device)  # fp32 tables for the native kernels
        self.cos = cos.to(device=device, dtype=dtype)
        # rotate_half(x) * sin == roll(x, D/2) * sin_signed, with the first half's sign folded into sin
        self.sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1).to(device=device, dtype=dtype)
        self.half = half

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T] positions -> cos, sin_signed as [T, 1, D], broadcast over heads; gathered once per step."""
        return self.cos[positions].unsqueeze(1), self.sin_signed[positions].unsqueeze(1)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, D] -> rotated [T, heads, D]."""
        return x * cos + x.roll(self.half, dims=-1) * sin_signed


def _inv_freq(config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _STATIC_TYPES:
        raise InvalidRequest(
            f"RoPE type {rope_type!r} is not supported (it depends on the running sequence length); "
            f"supported: {', '.join(_STATIC_TYPES)}"
        )
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)
