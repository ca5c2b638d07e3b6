"""KV block accounting per replica, mirroring each worker's paged block tables, with prefix caching.

A sequence holding n tokens of KV uses exactly ceil(n / block_size) blocks on its replica, which is what
the worker allocates too, so a plan the scheduler accepts never runs a worker out of blocks. Calls come
in pairs (`can_allocate` then `allocate`); `allocate` either takes every block it needs or none.

Prefix caching (on unless `caching=False`): every full block is named by a hash chain over the replica's
seed (model, fragments, dtype) and every token up to the block's end, so equal names mean equal KV.
- When a step fills a block, its name goes to the worker with the step (`new_block_hashes`) and the block is
  *pending*; when the step's results come back (`commit`) it is *cached*: a new request on that replica
  starts from the longest run of cached blocks of its tokens (`match`, `attach`) and prefills only the rest.
- Blocks are shared by reference count. A cached block nobody holds is *evictable*: it counts as free and
  is evicted, least recently freed first, only when a new allocation finds no never-used block. This
  manager decides every eviction and hands the names to the router (`take_evictions`), which sends them to
  the worker with the next Release, so both sides always agree on what is cached; workers never evict.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from genie.errors import AlreadyExists, NotFound, ResourceExhausted
from genie.serving.request import Request

NOT_CACHED = b""  # in new_block_hashes: this block stays private (its contents are cached or pending already)


@dataclass(eq=False, slots=True)
class _Block:
    digest: bytes | None = None  # set once cached
    refs: int = 1


@dataclass(slots=True)
class _Pool:
    num_blocks: int
    seed: bytes
    fresh: int = 0  # blocks never used, or freed without a name
    held: int = 0  # blocks some request holds
    shared: int = 0  # cached blocks two requests or more hold
    cached: dict[bytes, _Block] = field(default_factory=dict)
    evictable: OrderedDict[bytes, _Block] = field(default_factory=OrderedDict)  # least recently freed first
    pending: dict[bytes, str] = field(default_factory=dict)  # names of blocks the step being planned fills
    evictions: list[bytes] = field(default_factory=list)  # for the worker's next Release

    @property
    def free(self) -> int:
        return self.fresh + len(self.evictable)


@dataclass(slots=True)
class _Seq:
    replica: str
    blocks: list[_Block] = field(default_factory=list)
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # (block index, name) filled by its step
    sent: bool = False  # the step with its pending blocks is in flight


@dataclass(frozen=True, slots=True)
class Match:
    cached: int  # leading blocks of the request's tokens cached on the replica
    pending: int  # blocks after those that the step being planned fills there


def chain_digests(seed: bytes, token_ids: list[int], block_size: int, start: list[bytes] | None = None) -> list[bytes]:
    """Names of the full blocks of token_ids: each hashes its parent's name and its own tokens."""
    digests = list(start or [])
    parent = digests[-1] if digests else seed
    for begin in range(len(digests) * block_size, len(token_ids) - block_size + 1, block_size):
        tokens = array("q", token_ids[begin : begin + block_size]).tobytes()
        parent = hashlib.blake2b(parent + tokens, digest_size=16).digest()
        digests.append(parent)
    return digests


class BlockManager:
    def __init__(self, replicas: dict[str, int], block_size: int, *, caching: bool = True,
                 seeds: dict[str, bytes] | None = None) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self.caching = caching
        self._pools: dict[str, _Pool] = {}
        self._seqs: dict[str, _Seq] = {}  # request_id -> what it holds
        self._chains: dict[str, dict[bytes, list[bytes]]] = {}  # request_id -> seed -> names of its full blocks
        self.queried_tokens = 0  # tokens of admitted requests looked up in the cache
        self.hit_tokens = 0  # of those, tokens found cached
        for name, num_blocks in replicas.items():
            self.add_replica(name, num_blocks, (seeds or {}).get(name, b""))

    def add_replica(self, name: str, num_blocks: int, seed: bytes = b"") -> None:
        if name in self._pools:
            raise AlreadyExists(f"replica {name!r} is already known to the block manager")
        if num_blocks <= 0:
            raise ValueError(f"replica {name!r} needs at least one KV block, got {num_blocks}")
        self._pools[name] = _Pool(num_blocks, hashlib.blake2b(seed, digest_size=16).digest(), fresh=num_blocks)

    def remove_replica(self, name: str) -> None:
        """Forget a replica and every allocation and cached block on it (its worker is gone)."""
        self._pool(name)
        del self._pools[name]
        self._seqs = {rid: seq for rid, seq in self._seqs.items() if seq.replica != name}

    @property
    def replicas(self) -> list[str]:
        return sorted(self._pools)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_blocks(self, replica: str) -> int:
        return self._pool(replica).num_blocks

    def num_free(self, replica: str) -> int:
        """Blocks a new allocation may take: never used ones and evictable cached ones."""
        return self._pool(replica).free

    def capacity_tokens(self, replica: str) -> int:
        """The most tokens one sequence can ever hold on this replica (all of its blocks)."""
        return self._pool(replica).num_blocks * self.block_size

    def held_blocks(self, request_id: str) -> int:
        seq = self._seqs.get(request_id)
        return 0 if seq is None else len(seq.blocks)

    def needed(self, req: Request, n_new_tokens: int) -> int:
        """Blocks beyond those already held to grow req's KV from num_computed to num_computed + n."""
        return max(0, self.blocks_for(req.num_computed + n_new_tokens) - self.held_blocks(req.request_id))

    def can_allocate(self, req: Request, n_new_tokens: int) -> bool:
        return self.needed(req, n_new_tokens) <= self.num_free(self._replica_of(req))

    def max_new_tokens(self, req: Request) -> int:
        """The most tokens req could add now, using its spare slots and every free block."""
        blocks = self.held_blocks(req.request_id) + self.num_free(self._replica_of(req))
        return max(0, blocks * self.block_size - req.num_computed)

    # -- prefix caching ---------------------------------------------------------------------------------

    def match(self, req: Request, replica: str) -> Match:
        """How much of req's tokens `replica` holds cached, or is filling in this step. At least one token is
        always left to compute (its last one), since the step must sample after it."""
        pool = self._pool(replica)
        if not self.caching or req.sampling.counts_tokens:  # penalties need the worker to see every token
            return Match(0, 0)
        usable = (req.num_tokens - 1) // self.block_size
        if req.sampling.guided:  # the worker rebuilds a guide's state from the output tokens it is sent
            usable = min(usable, req.num_prompt // self.block_size)
        digests = self._digests(req, pool.seed)[:usable]
        cached = 0
        while cached < len(digests) and digests[cached] in pool.cached:
            cached += 1
        pending = cached
        while pending < len(digests) and digests[pending] in pool.pending:
            pending += 1
        return Match(cached, pending - cached)

    def can_attach(self, req: Request, replica: str, blocks: int, n_new_tokens: int) -> bool:
        """Room for req to start from `blocks` cached blocks and add n tokens after them."""
        pool = self._pool(replica)
        digests = self._digests(req, pool.seed)[:blocks]
        reused_free = sum(1 for d in digests if d in pool.evictable)
        need = self.blocks_for(blocks * self.block_size + n_new_tokens) - blocks
        return need <= pool.free - reused_free

    def attach(self, req: Request, replica: str, blocks: int) -> tuple[bytes, ...]:
        """Start req (holding nothing) from its first `blocks` cached blocks; returns their names."""
        assert req.request_id not in self._seqs, f"{req.request_id} already holds blocks"
        pool = self._pool(replica)
        digests = tuple(self._digests(req, pool.seed)[:blocks])
        seq = self._seqs[req.request_id] = _Seq(replica)
        self._hold(pool, seq, digests)
        if self.caching:
            self.queried_tokens += req.num_tokens
            self.hit_tokens += blocks * self.block_size
        return digests

    @staticmethod
    def _hold(pool: _Pool, seq: _Seq, digests: tuple[bytes, ...] | list[bytes]) -> None:
        """seq takes a reference to each of these cached blocks (an evictable one is held again)."""
        for digest in digests:
            block = pool.cached[digest]
            if block.refs == 0:
                del pool.evictable[digest]
                pool.held += 1
            elif block.refs == 1:
                pool.shared += 1
            block.refs += 1
            seq.blocks.append(block)

    def commit(self, req: Request) -> None:
        """req's step came back: the blocks it filled are cached now."""
        seq = self._seqs.get(req.request_id)
        if seq is not None:
            self._cache_pending(seq)

    def _cache_pending(self, seq: _Seq) -> None:
        pool = self._pools[seq.replica]
        for index, digest in seq.pending:
            del pool.pending[digest]
            seq.blocks[index].digest = digest
            pool.cached[digest] = seq.blocks[index]
        seq.pending.clear()
        seq.sent = False

    def seal(self) -> None:
        """The planned step is sent: a request that ends before it returns leaves its pending blocks cached on
        the worker (the step may still commit them), so `free` has them evicted there."""
        for seq in self._seqs.values():
            if seq.pending:
                seq.sent = True

    def take_evictions(self, replicas: Iterable[str] | None = None) -> dict[str, list[bytes]]:
        """{replica: names the worker must evict}, once; the router sends them with the next Release. With
        `replicas`, only theirs (the others have a step in flight and take theirs before their next one)."""
        names = self._pools if replicas is None else [r for r in replicas if r in self._pools]
        out = {name: self._pools[name].evictions for name in names if self._pools[name].evictions}
        for name in out:
            self._pools[name].evictions = []
        return out

    def stats(self, replica: str) -> dict[str, int]:
        """Cached, shared and evictable blocks of a replica."""
        pool = self._pool(replica)
        return {"cached": len(pool.cached), "shared": pool.shared, "evictable": len(pool.evictable)}

    # -- allocation -------------------------------------------------------------------------------------

    def allocate(self, req: Request, n_new_tokens: int) -> tuple[bytes, ...]:
        """Takes the blocks req needs for n more tokens; returns the names of the blocks those tokens fill
        (NOT_CACHED for one that stays private), empty when caching is off."""
        replica = self._replica_of(req)
        need = self.needed(req, n_new_tokens)
        pool = self._pool(replica)
        if need > pool.free:
            raise ResourceExhausted(
                f"replica {replica!r} has {pool.free} free KV blocks, request {req.request_id!r} needs {need}"
            )
        seq = self._seqs.setdefault(req.request_id, _Seq(replica))
        self._take(pool, seq, need)
        return self._name_filled(req, seq, pool, n_new_tokens)

    @staticmethod
    def _take(pool: _Pool, seq: _Seq, need: int) -> None:
        """Never-used blocks first, then the least recently freed cached ones (evicted on the worker too)."""
        for _ in range(need):
            if pool.fresh:
                pool.fresh -= 1
            else:
                digest, _evicted = pool.evictable.popitem(last=False)
                del pool.cached[digest]
                pool.evictions.append(digest)
            seq.blocks.append(_Block())
            pool.held += 1

    def free(self, req: Request) -> int:
        """Give back every block req holds; returns how many (0 when it held none)."""
        seq = self._seqs.pop(req.request_id, None)
        if seq is None:
            return 0
        return self._free_seq(seq)

    def _free_seq(self, seq: _Seq) -> int:
        pool = self._pools[seq.replica]
        for _, digest in seq.pending:
            del pool.pending[digest]
            if seq.sent:  # its step may still cache them on the worker: evict them there after its Release
                pool.evictions.append(digest)
        for block in reversed(seq.blocks):  # tail first into the LRU: a prefix's last blocks go first
            block.refs -= 1
            if block.refs == 1:
                pool.shared -= 1
            if block.refs:
                continue
            pool.held -= 1
            if block.digest is None:
                pool.fresh += 1
            else:
                pool.evictable[block.digest] = block
        return len(seq.blocks)

    # -- KV handoff (prefill/decode disaggregation) ------------------------------------------------------

    def reserve(self, key: str, req: Request, replica: str,
                evict: bool = True) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
        """Blocks on `replica` for the KV of req's first num_computed tokens, which another worker will send,
        under `key` (req still holds its blocks where it was prefilled). The leading full blocks `replica` has
        cached are attached, so they are not sent again; fresh blocks take the rest, and the full ones among
        them are named (pending until `adopt`). Returns (the cached prefix's names, the imported full blocks'
        names, NOT_CACHED where unnamed), or None, with nothing taken, when they do not fit (without `evict`:
        in never-used blocks)."""
        assert key not in self._seqs, f"{key} is reserved already"
        pool = self._pool(replica)
        tokens = req.num_computed
        named = self.caching and not req.sampling.counts_tokens and not req.sampling.guided
        digests = self._digests(req, pool.seed, upto=tokens) if named else []
        cached = 0
        while cached < min(len(digests), (tokens - 1) // self.block_size) and digests[cached] in pool.cached:
            cached += 1  # (at least one token is sent: the import starts the sequence)
        need = self.blocks_for(tokens) - cached
        room = pool.free - sum(1 for d in digests[:cached] if d in pool.evictable) if evict else pool.fresh
        if need > room:
            return None
        seq = self._seqs[key] = _Seq(replica, sent=True)  # the import may name its blocks even if it then fails
        self._hold(pool, seq, digests[:cached])
        self._take(pool, seq, need)
        names = []
        for index in range(cached, tokens // self.block_size):
            digest = digests[index] if index < len(digests) else NOT_CACHED
            if digest == NOT_CACHED or digest in pool.cached or digest in pool.pending:
                names.append(NOT_CACHED)
                continue
            pool.pending[digest] = key
            seq.pending.append((index, digest))
            names.append(digest)
        return tuple(digests[:cached]), tuple(names)

    def adopt(self, req: Request, key: str) -> str:
        """The KV arrived: req gives back the blocks it held and holds the ones reserved under `key`, whose
        named blocks are cached now; returns their replica, where req lives from now on."""
        self.free(req)
        seq = self._seqs.pop(key)
        self._cache_pending(seq)
        self._seqs[req.request_id] = seq
        return seq.replica

    def unreserve(self, key: str) -> None:
        """The handoff did not happen: give back what `key` reserved (nothing if its replica is gone)."""
        seq = self._seqs.pop(key, None)
        if seq is not None:
            self._free_seq(seq)

    def usage(self) -> dict[str, tuple[int, int]]:
        """{replica: (used blocks, free blocks)}, replicas by name; evictable cached blocks count as free."""
        return {name: (self._pools[name].held, self._pools[name].free) for name in self.replicas}

    def _name_filled(self, req: Request, seq: _Seq, pool: _Pool, n_new_tokens: int) -> tuple[bytes, ...]:
        if not self.caching:
            return ()
        first, end = req.num_computed // self.block_size, (req.num_computed + n_new_tokens) // self.block_size
        if first == end:
            return ()
        digests = self._digests(req, pool.seed, upto=req.num_computed + n_new_tokens)
        names = []
        for index in range(first, end):
            digest = digests[index] if index < len(digests) else NOT_CACHED  # beyond its tokens: nothing to name
            if digest == NOT_CACHED or digest in pool.cached or digest in pool.pending:
                names.append(NOT_CACHED)
                continue
            pool.pending[digest] = req.request_id
            seq.pending.append((index, digest))
            names.append(digest)
        return tuple(names)

    def _digests(self, req: Request, seed: bytes, upto: int | None = None) -> list[bytes]:
        """Names of req's full blocks among its first `upto` tokens (all of them by default)."""
        chains = self._chains.setdefault(req.request_id, {})
        digests = chains.get(seed, [])
        tokens = req.num_tokens if upto is None else upto
        if len(digests) < tokens // self.block_size:
            digests = chains[seed] = chain_digests(seed, req.all_ids[:tokens], self.block_size, digests)
        return digests

    def forget(self, request_id: str) -> None:
        """The request ended: drop the names computed for it (call after `free`)."""
        self._chains.pop(request_id, None)

    def _replica_of(self, req: Request) -> str:
        seq = self._seqs.get(req.request_id)
        assert seq is None or seq.replica == req.replica, f"{req.request_id} holds blocks on {seq.replica}"
        if req.replica is None:
            raise ValueError(f"request {req.request_id!r} is not placed on a replica yet")
        return req.replica

    def _pool(self, replica: str) -> _Pool:
        pool = self._pools.get(replica)
        if pool is None:
            raise NotFound(f"unknown replica {replica!r}; known replicas: {', '.join(self.replicas) or 'none'}")
        return pool
