"""BlockTables with prefix caching: named blocks become cached at commit, new sequences start from them by
reference, released ones stay cached (evictable) until evicted by name, and a failed step undoes it all."""

from __future__ import annotations

from genie.workers.engine.allocator import BlockAllocator
from genie.workers.engine.block_tables import BlockTables

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def tables(num_blocks: int = 8) -> BlockTables:
    return BlockTables(BlockAllocator(num_blocks), block_size=4)


def test_named_blocks_are_cached_at_commit_and_shared_by_reference() -> None:
    t = tables()
    t.commit([t.grow("s1", 10, new_hashes=(A, B))])  # 10 tokens: blocks 0 and 1 full, block 2 partial
    assert (t.num_cached, t.num_evictable, t.allocator.num_used) == (2, 0, 3)
    g = t.grow("s2", 11, prefix=(A, B))  # starts at 8 from the two cached blocks, takes one block of its own
    assert t.blocks("s2")[:2] == t.blocks("s1")[:2] and len(g.new_blocks) == 1
    t.commit([g])
    assert (t.length("s2"), t.num_shared, t.allocator.num_used) == (11, 2, 4)
    t.release(["s1"])
    assert (t.num_cached, t.num_evictable, t.allocator.num_used) == (2, 0, 3)  # s2 still holds A and B
    t.release(["s2"])
    assert (t.num_cached, t.num_evictable, t.allocator.num_used) == (2, 2, 2)  # cached, nobody holds them


def test_eviction_frees_only_unreferenced_blocks_and_ignores_unknown_names() -> None:
    t = tables()
    t.commit([t.grow("s1", 8, new_hashes=(A, B))])
    t.commit([t.grow("s2", 5, prefix=(A,))])
    t.release(["s1"])
    assert t.evict([A, B, C]) == 1  # A is held by s2, C was never cached
    assert t.refused_evictions == 1 and t.missing([A, B]) == [B]
    t.release(["s2"])
    assert t.evict([A]) == 1 and t.allocator.num_used == 0 and t.num_cached == 0


def test_rollback_of_a_new_sequence_gives_back_its_references_and_blocks() -> None:
    t = tables()
    t.commit([t.grow("s1", 4, new_hashes=(A,))])
    t.release(["s1"])
    g = t.grow("s2", 9, prefix=(A,), new_hashes=(B,))
    t.rollback([g])
    assert "s2" not in t and t.num_evictable == 1 and t.allocator.num_used == 1 and t.missing([B]) == [B]


def test_an_unnamed_or_already_cached_block_stays_private() -> None:
    t = tables()
    t.commit([t.grow("s1", 4, new_hashes=(A,)), t.grow("s2", 8, new_hashes=(A, b""))])
    assert t.num_cached == 1 and t.blocks("s1")[0] != t.blocks("s2")[0]
    t.release(["s1", "s2"])
    assert (t.num_cached, t.num_evictable, t.allocator.num_used) == (1, 1, 1)
