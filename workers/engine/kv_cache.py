"""The paged KV cache of one fragment: block storage allocated once at load, and per-sequence block tables."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from genie.workers.engine.allocator import BlockAllocator


class KVCache:
    """Per layer, keys and values as head-major flat slots [kv_heads, num_blocks * block_size, head_dim]; slot
    block * block_size + offset holds one token. One tensor backs all layers so the budget is one allocation."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # zeros, not empty: touch the memory now, so an over-large budget fails at load rather than mid-step
        storage = torch.zeros(num_layers, 2, kv_heads, num_blocks * block_size, head_dim, dtype=dtype, device=device)
        self.keys = list(storage[:, 0].unbind(0))
        self.values = list(storage[:, 1].unbind(0))
        self.nbytes = storage.numel() * storage.element_size()

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return num_layers * 2 * block_size * kv_heads * head_dim * dtype.itemsize


@dataclass(slots=True)
class SeqBlocks:
    blocks: list[int] = field(default_factory=list)
    length: int = 0  # tokens whose K/V are in the cache


@dataclass(frozen=True, slots=True)
class Growth:
    """What one step does to one sequence: the undo information for a failed step."""

    seq_id: str
    state: SeqBlocks
    is_new: bool
    new_blocks: list[int]
    new_length: int


class BlockTables:
    """Which blocks hold which sequence. Growth is two-phase: `grow` takes blocks, then `commit` or `rollback`."""

    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self._seqs: dict[str, SeqBlocks] = {}

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def length(self, seq_id: str) -> int | None:
        state = self._seqs.get(seq_id)
        return None if state is None else state.length

    def blocks_needed(self, seq_id: str, new_length: int) -> int:
        state = self._seqs.get(seq_id)
        held = 0 if state is None else len(state.blocks)
        return max(0, -(-new_length // self.block_size) - held)

    def grow(self, seq_id: str, new_length: int) -> Growth:
        """Takes the blocks `seq_id` needs to hold `new_length` tokens. The caller checked they are free."""
        state = self._seqs.get(seq_id)
        is_new = state is None
        if is_new:
            state = self._seqs[seq_id] = SeqBlocks()
        new_blocks = self.allocator.allocate(self.blocks_needed(seq_id, new_length))
        state.blocks.extend(new_blocks)
        return Growth(seq_id, state, is_new, new_blocks, new_length)

    def commit(self, growths: Iterable[Growth]) -> None:
        for g in growths:
            g.state.length = g.new_length

    def rollback(self, growths: Iterable[Growth]) -> None:
        for g in reversed(list(growths)):
            if g.new_blocks:
                del g.state.blocks[-len(g.new_blocks) :]
                self.allocator.free(g.new_blocks)
            if g.is_new:
                del self._seqs[g.seq_id]

    def blocks(self, seq_id: str) -> list[int]:
        return self._seqs[seq_id].blocks

    def release(self, seq_ids: Iterable[str]) -> int:
        released = 0
        for seq_id in dict.fromkeys(seq_ids):
            state = self._seqs.pop(seq_id, None)
            if state is not None:
                self.allocator.free(state.blocks)
                released += 1
        return released
