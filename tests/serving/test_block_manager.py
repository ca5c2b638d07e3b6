from __future__ import annotations

import pytest
from builders import make_request

from genie.errors import AlreadyExists, NotFound, ResourceExhausted
from genie.serving.block_manager import BlockManager


def placed(request_id: str, replica: str = "r0", num_computed: int = 0):
    req = make_request(request_id, prompt=4)
    req.replica = replica
    req.num_computed = num_computed
    return req


def test_blocks_for_rounds_up_to_whole_blocks():
    bm = BlockManager({"r0": 8}, block_size=16)
    assert [bm.blocks_for(n) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    assert bm.capacity_tokens("r0") == 128


def test_allocation_grows_only_when_a_block_boundary_is_crossed():
    bm = BlockManager({"r0": 8}, block_size=4)
    req = placed("a")
    bm.allocate(req, 3)  # 3 tokens -> 1 block
    req.num_computed = 3
    assert bm.needed(req, 1) == 0  # the 4th token fits the same block
    bm.allocate(req, 1)
    req.num_computed = 4
    assert bm.needed(req, 1) == 1
    bm.allocate(req, 5)  # 9 tokens -> 3 blocks
    assert bm.held_blocks("a") == 3
    assert bm.usage() == {"r0": (3, 5)}


def test_allocate_never_half_succeeds():
    bm = BlockManager({"r0": 4}, block_size=4)
    first, second = placed("a"), placed("b")
    bm.allocate(first, 12)
    assert not bm.can_allocate(second, 8)
    with pytest.raises(ResourceExhausted, match="1 free KV blocks.*needs 2"):
        bm.allocate(second, 8)
    assert bm.usage() == {"r0": (3, 1)}
    assert bm.held_blocks("b") == 0
    assert bm.can_allocate(second, 4)


def test_free_returns_every_block_and_is_idempotent():
    bm = BlockManager({"r0": 4, "r1": 4}, block_size=4)
    a, b = placed("a"), placed("b", "r1")
    bm.allocate(a, 10)
    bm.allocate(b, 1)
    assert bm.free(a) == 3
    assert bm.free(a) == 0
    assert bm.usage() == {"r0": (0, 4), "r1": (1, 3)}


def test_max_new_tokens_counts_spare_slots_and_free_blocks():
    bm = BlockManager({"r0": 4}, block_size=4)
    req = placed("a")
    bm.allocate(req, 5)  # 2 blocks; 3 spare slots in the second
    req.num_computed = 5
    assert bm.max_new_tokens(req) == 3 + 2 * 4
    other = placed("b")
    bm.allocate(other, 8)
    assert bm.max_new_tokens(req) == 3


def test_unknown_and_duplicate_replicas_are_clear_errors():
    bm = BlockManager({"r0": 4}, block_size=4)
    with pytest.raises(NotFound, match="unknown replica 'nope'; known replicas: r0"):
        bm.num_free("nope")
    with pytest.raises(AlreadyExists):
        bm.add_replica("r0", 4)
    with pytest.raises(ValueError, match="at least one KV block"):
        bm.add_replica("r1", 0)
    with pytest.raises(ValueError, match="not placed on a replica"):
        bm.can_allocate(make_request("x"), 1)


def test_remove_replica_drops_its_allocations():
    bm = BlockManager({"r0": 4, "r1": 4}, block_size=4)
    a, b = placed("a"), placed("b", "r1")
    bm.allocate(a, 4)
    bm.allocate(b, 4)
    bm.remove_replica("r0")
    assert bm.usage() == {"r1": (1, 3)}
    assert bm.held_blocks("a") == 0
    assert bm.free(a) == 0
