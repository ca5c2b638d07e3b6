"""BlockAllocator and BlockTables: paired check/act, and no call that half-succeeds."""

from __future__ import annotations

import pytest

from genie.errors import ResourceExhausted
from genie.workers.engine import BlockAllocator
from genie.workers.engine.block_tables import BlockTables


def test_can_allocate_then_allocate_hands_out_distinct_blocks():
    alloc = BlockAllocator(5)
    assert alloc.can_allocate(5) and not alloc.can_allocate(6) and alloc.can_allocate(0)
    first = alloc.allocate(2)
    rest = alloc.allocate(3)
    assert sorted(first + rest) == [0, 1, 2, 3, 4]
    assert (alloc.num_free, alloc.num_used) == (0, 5)
    assert not alloc.can_allocate(1) and alloc.can_allocate(0)
    assert alloc.allocate(0) == []


def test_allocate_beyond_free_raises_and_takes_nothing():
    alloc = BlockAllocator(4)
    held = alloc.allocate(3)
    with pytest.raises(ResourceExhausted, match="2 blocks needed, 1 free"):
        alloc.allocate(2)
    assert (alloc.num_free, alloc.num_used) == (1, 3)
    alloc.free(held)
    assert alloc.num_free == 4


def test_free_with_any_bad_id_frees_nothing():
    alloc = BlockAllocator(4)
    held = alloc.allocate(2)
    free_one = next(b for b in range(4) if b not in held)
    for bad in ([held[0], free_one], [held[0], held[0]], [held[0], 99]):
        with pytest.raises(ValueError, match="cannot free"):
            alloc.free(bad)
        assert (alloc.num_free, alloc.num_used) == (2, 2)
    alloc.free(held)
    assert (alloc.num_free, alloc.num_used) == (4, 0)


def test_freed_blocks_are_reused():
    alloc = BlockAllocator(3)
    a = alloc.allocate(3)
    alloc.free(a[1:2])
    assert alloc.allocate(1) == a[1:2]


def test_needs_at_least_one_block():
    with pytest.raises(ValueError):
        BlockAllocator(0)
    with pytest.raises(ValueError):
        BlockAllocator(2).allocate(-1)


def test_block_tables_grow_commit_rollback_release():
    tables = BlockTables(BlockAllocator(10), block_size=4)
    assert tables.blocks_needed("a", 9) == 3
    g = tables.grow("a", 9)
    assert len(g.new_blocks) == 3 and tables.length("a") == 0
    tables.commit([g])
    assert tables.length("a") == 9 and tables.blocks_needed("a", 12) == 0 and tables.blocks_needed("a", 13) == 1
    grow_a = tables.grow("a", 13)
    grow_b = tables.grow("b", 2)
    assert tables.allocator.num_free == 5
    tables.rollback([grow_a, grow_b])
    assert tables.allocator.num_free == 7 and "b" not in tables and tables.blocks("a") == g.new_blocks
    assert tables.length("a") == 9
    assert tables.release(["a", "a", "ghost"]) == 1
    assert tables.allocator.num_free == 10 and len(tables) == 0
