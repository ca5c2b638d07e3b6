"""Hands out the fixed KV blocks of one fragment; every call either fully succeeds or changes nothing."""

from __future__ import annotations

from collections.abc import Iterable

from genie.errors import ResourceExhausted


class BlockAllocator:
    """Free-list over block ids [0, num_blocks). Ask with `can_allocate`, then act with `allocate`."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a block allocator needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        # Popped from the end, so low ids go out first and a fresh sequence gets neighbouring blocks.
        self._free = list(range(num_blocks - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def can_allocate(self, n: int) -> bool:
        return 0 <= n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks ({n})")
        if n > len(self._free):
            raise ResourceExhausted(f"KV cache full: {n} blocks needed, {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(n)]
        self._used.update(blocks)
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Returns blocks to the pool; refuses the whole call if any id is not currently allocated."""
        blocks = list(blocks)
        unknown = [b for b in blocks if b not in self._used]
        if unknown or len(set(blocks)) != len(blocks):
            raise ValueError(f"cannot free blocks {blocks}: not allocated, or listed twice (bad: {unknown})")
        self._used.difference_update(blocks)
        self._free.extend(reversed(blocks))
