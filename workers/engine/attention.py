"""Attention for a whole mixed batch over the paged cache: one scatter, one gather, one SDPA per layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genie.workers.engine.batch import AttnBatch


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: AttnBatch,
    scale: float,
) -> torch.Tensor:
    """q: [T, heads, D]; k, v: [T, kv_heads, D] for the step's new tokens; caches: [slots, kv_heads, D].
    Writes k, v into their slots, then attends each query to its sequence's context. Returns [T, heads * D]."""
    key_cache.index_copy_(0, batch.slots, k)
    value_cache.index_copy_(0, batch.slots, v)
    keys = key_cache[batch.gather].transpose(1, 2)  # [B, kv_heads, L, D]
    values = value_cache[batch.gather].transpose(1, 2)
    heads, dim = q.shape[1], q.shape[2]
    if batch.q_index is None:
        queries = q.unsqueeze(2)  # [B, heads, 1, D]: one decode token per sequence
    else:
        padded = q.new_zeros(batch.batch * batch.q_len, heads, dim).index_copy_(0, batch.q_index, q)
        queries = padded.view(batch.batch, batch.q_len, heads, dim).transpose(1, 2)  # [B, heads, Lq, D]
    out = F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=batch.mask, scale=scale, enable_gqa=heads != keys.shape[1]
    )
    out = out.transpose(1, 2).reshape(batch.batch * batch.q_len, heads * dim)  # [B * Lq, heads * D]
    return out if batch.q_index is None else out.index_select(0, batch.q_index)
