"""The per-step index tensors that let every layer run attention for the whole batch without Python loops.

A step holds B sequences; sequence i already has ctx_i tokens in the cache and brings n_i new ones
(a prefill chunk, or 1 for decode). T = sum(n_i) new tokens travel through the layers as one [T, hidden]
tensor. Attention pads them to [B, Lq] queries (Lq = max n_i) against [B, L] cached keys (L = max ctx_i + n_i).
Everything here is built once per step and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SeqLayout:
    """One sequence's place in a step: its block table (already covering ctx + n tokens), ctx and n."""

    blocks: list[int]
    ctx: int
    n: int


@dataclass(frozen=True, slots=True)
class AttnBatch:
    positions: torch.Tensor  # [T] long: absolute position of each new token
    slots: torch.Tensor  # [T] long: flat KV slot (block * block_size + offset) each new token writes
    gather: torch.Tensor  # [B, L] long: flat KV slots of each sequence's whole context, padded with slot 0
    q_index: torch.Tensor | None  # [T] long: row of each new token in the padded [B * Lq] queries; None if Lq == 1
    mask: torch.Tensor | None  # [B, 1, Lq, L] bool, True where a query may attend; None when nothing is masked
    batch: int
    q_len: int  # Lq
    kv_len: int  # L
    last_rows: list[int]  # [B]: row in [T] of each sequence's last new token


def build_batch(seqs: list[SeqLayout], block_size: int, device: torch.device) -> AttnBatch:
    ctx = [s.ctx for s in seqs]
    n = [s.n for s in seqs]
    lens = [c + k for c, k in zip(ctx, n)]
    batch, q_len, kv_len = len(seqs), max(n), max(lens)
    width = max(len(s.blocks) for s in seqs)
    table = torch.tensor([s.blocks + [0] * (width - len(s.blocks)) for s in seqs], dtype=torch.long)
    # [B, width * block_size]: slot of every position each sequence's table covers
    slots_of = (table[:, :, None] * block_size + torch.arange(block_size)).view(batch, -1)
    last_rows = _cumsum(n)
    if q_len == 1:
        positions = torch.tensor(ctx, dtype=torch.long)
        seq_of_token = torch.arange(batch)
        q_index = None
    else:
        counts = torch.tensor(n)
        seq_of_token = torch.repeat_interleave(torch.arange(batch), counts)
        starts = torch.tensor([r - k + 1 for r, k in zip(last_rows, n)])
        offset = torch.arange(len(seq_of_token)) - starts[seq_of_token]
        positions = torch.tensor(ctx)[seq_of_token] + offset
        q_index = seq_of_token * q_len + offset
    slots = slots_of[seq_of_token, positions]
    mask = _mask(ctx, n, q_len, kv_len) if (q_len > 1 or min(lens) != kv_len) else None
    return AttnBatch(
        positions=positions.to(device),
        slots=slots.to(device),
        gather=slots_of[:, :kv_len].to(device),
        q_index=None if q_index is None else q_index.to(device),
        mask=None if mask is None else mask.to(device),
        batch=batch,
        q_len=q_len,
        kv_len=kv_len,
        last_rows=last_rows,
    )


def _mask(ctx: list[int], n: list[int], q_len: int, kv_len: int) -> torch.Tensor:
    """Query j of sequence i sees keys 0..ctx_i + j. Padding queries (j >= n_i) repeat the last real query's
    row, so no row is fully masked (a fully masked row makes SDPA return NaN); their output is dropped."""
    ctx_t = torch.tensor(ctx)[:, None]
    last = torch.tensor(n)[:, None] - 1
    q_pos = ctx_t + torch.minimum(torch.arange(q_len)[None, :], last)  # [B, Lq]
    return (torch.arange(kv_len)[None, None, :] <= q_pos[:, :, None]).unsqueeze(1)


def _cumsum(n: list[int]) -> list[int]:
    rows, total = [], 0
    for k in n:
        total += k
        rows.append(total - 1)
    return rows
