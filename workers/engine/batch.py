"""The per-step index tensors that let every layer run attention for the whole batch without Python loops.

A step holds B sequences; sequence i already has ctx_i tokens in the cache and brings n_i new ones.
The fragment orders them decodes first (n_i == 1), then prefill chunks, and the T = sum(n_i) new tokens
travel through the layers as one [T, hidden] tensor in that order. Attention treats the two groups apart:
decodes as one batched matmul over their gathered keys, each prefill chunk through SDPA on its own, so
no query or key is padded (a padded batch of chunks cost up to B times the attention of its longest).
Batch-invariant kernels take neither group: every token is a query of its own (TokenRows).
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
class DecodeGroup:
    """Rows [0, batch) of the step: one new token each."""

    batch: int
    kv_len: int  # L: the longest context in the group
    block_size: int
    tables: torch.Tensor  # [B, W] long: block tables, padded with block 0
    lens: torch.Tensor  # [B] long: tokens each sequence attends to (its context plus the new token)
    gather: torch.Tensor  # [B * L] long: flat KV slots of each sequence's context, padded with slot 0
    bias: torch.Tensor  # [kv_heads * B, group, L] (or [1, 1, 1] without padding): 0 where seen, -inf where padded


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """One sequence's chunk: rows [start, start + n) of the step, attending to its first ctx + n cache slots."""

    start: int
    n: int
    gather: torch.Tensor  # [ctx + n] long: the flat KV slots of positions 0..ctx + n - 1
    mask: torch.Tensor | None  # [n, ctx + n] bool, True where a query may attend; None when ctx == 0 (causal)


@dataclass(frozen=True, slots=True)
class PrefillGroup:
    """Rows [start, T) of the step: chunks of several tokens, each attended on its own (no padding)."""

    start: int
    chunks: list[PrefillChunk]


@dataclass(frozen=True, slots=True)
class TokenRows:
    """Every new token of the step as a query of its own, decode or prefill alike: the block table of its
    sequence and how many keys it sees (its position + 1). Batch-invariant attention runs on these."""

    tables: torch.Tensor  # [T, W] long, padded with block 0
    lens: torch.Tensor  # [T] long
    block_size: int


@dataclass(frozen=True, slots=True)
class AttnBatch:
    positions: torch.Tensor  # [T] long: absolute position of each new token
    slots: torch.Tensor  # [T] long: flat KV slot (block * block_size + offset) each new token writes
    decode: DecodeGroup | None
    prefill: PrefillGroup | None
    last_rows: list[int]  # per sequence: row in [T] of its last new token
    rows: TokenRows | None = None  # built when the kernels attend token by token (per_token)


@dataclass(frozen=True, slots=True)
class HeadLayout:
    kv_heads: int
    group: int  # query heads per KV head
    dtype: torch.dtype
    device: torch.device


def build_batch(seqs: list[SeqLayout], block_size: int, heads: HeadLayout, per_token: bool = False) -> AttnBatch:
    """`seqs` must list the one-token sequences first. per_token: `rows` (TokenRows) instead of the groups."""
    n_decode = next((i for i, s in enumerate(seqs) if s.n > 1), len(seqs))
    decode, chunks = seqs[:n_decode], seqs[n_decode:]
    positions, slots = [], []
    for s in seqs:
        positions.extend(range(s.ctx, s.ctx + s.n))
        slots.extend(_slot(s.blocks, p, block_size) for p in range(s.ctx, s.ctx + s.n))
    device = heads.device
    return AttnBatch(
        positions=torch.tensor(positions, dtype=torch.long).to(device),
        slots=torch.tensor(slots, dtype=torch.long).to(device),
        decode=_decode_group(decode, block_size, heads) if decode and not per_token else None,
        prefill=_prefill_group(chunks, n_decode, block_size, device) if chunks and not per_token else None,
        last_rows=_cumsum([s.n for s in seqs]),
        rows=_token_rows(seqs, block_size, device) if per_token else None,
    )


def _token_rows(seqs: list[SeqLayout], block_size: int, device: torch.device) -> TokenRows:
    width = max(-(-(s.ctx + s.n) // block_size) for s in seqs)
    tables, lens = [], []
    for s in seqs:
        table = (s.blocks + [0] * width)[:width]
        tables.extend([table] * s.n)
        lens.extend(range(s.ctx + 1, s.ctx + s.n + 1))
    return TokenRows(torch.tensor(tables, dtype=torch.long).to(device), torch.tensor(lens, dtype=torch.long).to(device),
                     block_size)


def _decode_group(seqs: list[SeqLayout], block_size: int, heads: HeadLayout) -> DecodeGroup:
    lens = [s.ctx + 1 for s in seqs]
    kv_len = max(lens)
    if min(lens) == kv_len:
        bias = torch.zeros(1, 1, 1, dtype=heads.dtype)
    else:
        seen = torch.arange(kv_len)[None, :] < torch.tensor(lens)[:, None]  # [B, L]
        bias = torch.zeros(len(seqs), kv_len, dtype=heads.dtype).masked_fill_(~seen, float("-inf"))
        bias = bias[None, :, None, :].expand(heads.kv_heads, -1, heads.group, -1).reshape(-1, heads.group, kv_len)
    table = _table(seqs, kv_len, block_size)
    return DecodeGroup(
        batch=len(seqs),
        kv_len=kv_len,
        block_size=block_size,
        tables=table.to(heads.device),
        lens=torch.tensor(lens, dtype=torch.long).to(heads.device),
        gather=_gather(table, kv_len, block_size).to(heads.device),
        bias=bias.to(heads.device),
    )


def _prefill_group(seqs: list[SeqLayout], start: int, block_size: int, device: torch.device) -> PrefillGroup:
    chunks, row = [], start
    for s in seqs:
        kv_len = s.ctx + s.n
        gather = sequence_slots(s.blocks, kv_len, block_size)
        mask = None if s.ctx == 0 else _mask(s.ctx, s.n)
        chunks.append(PrefillChunk(row, s.n, gather.to(device), None if mask is None else mask.to(device)))
        row += s.n
    return PrefillGroup(start=start, chunks=chunks)


def _table(seqs: list[SeqLayout], kv_len: int, block_size: int) -> torch.Tensor:
    """[B, W]: the blocks covering positions 0..L-1 of each sequence, padded with block 0."""
    width = -(-kv_len // block_size)
    return torch.tensor([(s.blocks + [0] * width)[:width] for s in seqs], dtype=torch.long)


def sequence_slots(blocks: list[int], tokens: int, block_size: int) -> torch.Tensor:
    """[tokens] long: the flat cache slot of positions 0..tokens-1 of a sequence holding `blocks`."""
    return _gather(torch.tensor([blocks], dtype=torch.long), tokens, block_size)


def _gather(table: torch.Tensor, kv_len: int, block_size: int) -> torch.Tensor:
    """[B * L]: slot of positions 0..L-1 of each sequence; positions a sequence does not reach map to slot 0."""
    slots = table[:, :, None] * block_size + torch.arange(block_size)  # [B, W, block_size]
    return slots.view(table.shape[0], -1)[:, :kv_len].reshape(-1)


def _mask(ctx: int, n: int) -> torch.Tensor:
    """[n, ctx + n]: query j (at position ctx + j) sees keys 0..ctx + j."""
    return torch.arange(ctx + n)[None, :] <= (ctx + torch.arange(n))[:, None]


def _slot(blocks: list[int], position: int, block_size: int) -> int:
    return blocks[position // block_size] * block_size + position % block_size


def _cumsum(n: list[int]) -> list[int]:
    rows, total = [], 0
    for k in n:
        total += k
        rows.append(total - 1)
    return rows
