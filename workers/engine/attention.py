"""Attention over the paged cache in plain torch ops, for a whole mixed batch without a loop over sequences.

Caches are head-major, [kv_heads, slots, D], so gathering a group's slots yields [kv_heads, B, L, D]
with each (head, sequence) block contiguous, which is what a batched matmul wants.
Decode tokens go through one baddbmm/softmax/bmm: on CPU, SDPA's kernels cost 2x (batch 1) to 15x
(batch 32) more for single-token queries (measured, bf16, torch 2.13). Prefill chunks go through SDPA,
which wins once queries are many, one call per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genie.workers.engine.batch import AttnBatch, DecodeGroup, PrefillGroup

DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DecodeGroup, float], torch.Tensor]


def write_kv(k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, slots: torch.Tensor):
    """k, v: [T, kv_heads, D] -> their slots in the [kv_heads, slots, D] caches."""
    key_cache.index_copy_(1, slots, k.transpose(0, 1))
    value_cache.index_copy_(1, slots, v.transpose(0, 1))


def grouped_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: AttnBatch,
    scale: float,
    decode: DecodeFn,
) -> torch.Tensor:
    """q: [T, heads, D], decode rows first. Returns [T, heads * D]."""
    dec, pre = batch.decode, batch.prefill
    if pre is None:
        return decode(q, key_cache, value_cache, dec, scale)
    if dec is None:
        return prefill_attention(q, key_cache, value_cache, pre, scale)
    decoded = decode(q[: pre.start], key_cache, value_cache, dec, scale)
    return torch.cat((decoded, prefill_attention(q[pre.start :], key_cache, value_cache, pre, scale)))


def decode_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, g: DecodeGroup, scale: float
) -> torch.Tensor:
    kv_heads, _, dim = key_cache.shape
    heads = q.shape[1]
    group = heads // kv_heads
    keys = key_cache.index_select(1, g.gather).view(kv_heads * g.batch, g.kv_len, dim)
    values = value_cache.index_select(1, g.gather).view(kv_heads * g.batch, g.kv_len, dim)
    # [B, heads, D] -> [kv_heads * B, group, D]: query head h reads KV head h // group
    queries = q.reshape(g.batch, kv_heads, group, dim).transpose(0, 1).reshape(kv_heads * g.batch, group, dim)
    scores = torch.baddbmm(g.bias, queries, keys.transpose(1, 2), alpha=scale)  # [kv_heads * B, group, L]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(probs, values)  # [kv_heads * B, group, D]
    return out.view(kv_heads, g.batch, group * dim).transpose(0, 1).reshape(g.batch, heads * dim)


def prefill_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, g: PrefillGroup, scale: float
) -> torch.Tensor:
    """q: [T - start, heads, D] -> [T - start, heads * D]; one SDPA call per chunk, causal when it starts at 0."""
    kv_heads, _, dim = key_cache.shape
    heads = q.shape[1]
    outs = []
    for c in g.chunks:
        keys = key_cache.index_select(1, c.gather).unsqueeze(0)  # [1, kv_heads, L, D]
        values = value_cache.index_select(1, c.gather).unsqueeze(0)
        rows = c.start - g.start
        queries = q[rows : rows + c.n].transpose(0, 1).unsqueeze(0)  # [1, heads, n, D]
        out = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=c.mask, is_causal=c.mask is None, scale=scale,
            enable_gqa=heads != kv_heads,
        )
        outs.append(out[0].transpose(0, 1).reshape(c.n, heads * dim))
    return outs[0] if len(outs) == 1 else torch.cat(outs)
