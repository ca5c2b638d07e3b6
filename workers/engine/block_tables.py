"""Which KV blocks hold which sequence, with full blocks shared by hash (prefix caching).

A sequence's blocks are its table: block i holds positions [i * block_size, (i + 1) * block_size). Growth is
two-phase: `grow` takes blocks, then `commit` or `rollback`, so a failed step changes nothing.

Prefix caching is driven by the caller (the router), which names blocks by an opaque hash of everything
that decides their contents (model, fragment, dtype and every token up to the block's end):
- a step that fills blocks may name them (`new_hashes`; b"" leaves one unnamed); at commit each named block
  becomes *cached*, and any later sequence may start from it;
- a new sequence may start from cached blocks (`prefix`) instead of position 0; it holds a reference to each;
- a released sequence gives its private blocks back to the allocator, but its cached blocks stay cached (with
  no reference, *evictable*) until the caller evicts them by hash.
The tables never evict on their own: the router keeps the same accounting and says what to evict, so both
sides always agree on which prefixes are cached. A caller that names no hashes gets plain private blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from genie.workers.engine.allocator import BlockAllocator

log = logging.getLogger("genie.worker")


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
    attached: list[int] = field(default_factory=list)  # cached blocks a new sequence started from
    first_full: int = 0  # index of the first block new_hashes name
    new_hashes: Sequence[bytes] = ()


class BlockTables:
    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self._seqs: dict[str, SeqBlocks] = {}
        self._cached: dict[bytes, int] = {}  # hash -> block: full blocks any new sequence may start from
        self._hash_of: dict[int, bytes] = {}
        self._refs: dict[int, int] = {}  # cached block -> sequences holding it (0: evictable)
        self.refused_evictions = 0  # evictions of a block still in use: the caller's accounting is off

    def __len__(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def seq_ids(self) -> list[str]:
        return list(self._seqs)

    def cached_hashes(self) -> list[bytes]:
        return list(self._cached)

    def length(self, seq_id: str) -> int | None:
        state = self._seqs.get(seq_id)
        return None if state is None else state.length

    def missing(self, hashes: Iterable[bytes]) -> list[bytes]:
        """The hashes in `hashes` that name no cached block."""
        return [h for h in hashes if h not in self._cached]

    def blocks_needed(self, seq_id: str, new_length: int, prefix_blocks: int = 0) -> int:
        """Fresh blocks `seq_id` needs to hold `new_length` tokens (a new one starting from prefix_blocks)."""
        state = self._seqs.get(seq_id)
        held = prefix_blocks if state is None else len(state.blocks)
        return max(0, -(-new_length // self.block_size) - held)

    def grow(
        self, seq_id: str, new_length: int, prefix: Sequence[bytes] = (), new_hashes: Sequence[bytes] = ()
    ) -> Growth:
        """Takes the blocks `seq_id` needs to hold `new_length` tokens. The caller checked they are free, that
        `prefix` (new sequences only) is cached, and that new_hashes names the blocks this growth fills."""
        state = self._seqs.get(seq_id)
        is_new = state is None
        attached: list[int] = []
        if is_new:
            attached = [self._cached[h] for h in prefix]
            for block in attached:
                self._refs[block] += 1
            state = self._seqs[seq_id] = SeqBlocks(list(attached), len(attached) * self.block_size)
        first_full = state.length // self.block_size
        new_blocks = self.allocator.allocate(self.blocks_needed(seq_id, new_length))
        state.blocks.extend(new_blocks)
        return Growth(seq_id, state, is_new, new_blocks, new_length, attached, first_full, tuple(new_hashes))

    def commit(self, growths: Iterable[Growth]) -> None:
        for g in growths:
            g.state.length = g.new_length
            for offset, digest in enumerate(g.new_hashes):
                self._register(g.state.blocks[g.first_full + offset], digest)

    def rollback(self, growths: Iterable[Growth]) -> None:
        for g in reversed(list(growths)):
            if g.new_blocks:
                del g.state.blocks[-len(g.new_blocks) :]
                self.allocator.free(g.new_blocks)
            for block in g.attached:
                self._refs[block] -= 1
            if g.is_new:
                del self._seqs[g.seq_id]

    def blocks(self, seq_id: str) -> list[int]:
        return self._seqs[seq_id].blocks

    def release(self, seq_ids: Iterable[str]) -> int:
        """Frees the sequences' private blocks; their cached ones stay cached. Returns how many were known."""
        released = 0
        for seq_id in dict.fromkeys(seq_ids):
            state = self._seqs.pop(seq_id, None)
            if state is None:
                continue
            private = []
            for block in state.blocks:
                if block in self._hash_of:
                    self._refs[block] -= 1
                else:
                    private.append(block)
            self.allocator.free(private)
            released += 1
        return released

    def evict(self, hashes: Iterable[bytes]) -> int:
        """Frees cached blocks no sequence holds; unknown hashes are ignored (already gone). Returns how many."""
        evicted = 0
        for digest in hashes:
            block = self._cached.get(digest)
            if block is None:
                continue
            if self._refs[block] > 0:
                self.refused_evictions += 1
                log.warning("asked to evict a KV block that %d sequences still use; kept it", self._refs[block])
                continue
            del self._cached[digest], self._hash_of[block], self._refs[block]
            self.allocator.free([block])
            evicted += 1
        return evicted

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def num_evictable(self) -> int:
        return sum(1 for refs in self._refs.values() if refs == 0)

    @property
    def num_shared(self) -> int:
        return sum(1 for refs in self._refs.values() if refs > 1)

    def _register(self, block: int, digest: bytes) -> None:
        """A block just filled becomes cached, unless it is unnamed (b"") or its contents are cached already; then
        it stays private."""
        if not digest or digest in self._cached or block in self._hash_of:
            return
        self._cached[digest] = block
        self._hash_of[block] = digest
        self._refs[block] = 1
