"""The paged KV cache of one fragment: block storage allocated once at load (the block tables are in block_tables.py)."""

from __future__ import annotations

import torch


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
