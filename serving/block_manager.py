"""KV block accounting per replica, mirroring each worker's paged allocator.

A sequence holding n tokens of KV uses exactly ceil(n / block_size) blocks on its replica, which is what
the worker allocates too, so a plan the scheduler accepts never runs a worker out of blocks. Calls come
in pairs (`can_allocate` then `allocate`); `allocate` either takes every block it needs or none.
"""

from __future__ import annotations

from dataclasses import dataclass

from genie.errors import AlreadyExists, NotFound, ResourceExhausted
from genie.serving.request import Request


@dataclass(slots=True)
class _Pool:
    num_blocks: int
    used: int = 0

    @property
    def free(self) -> int:
        return self.num_blocks - self.used


class BlockManager:
    def __init__(self, replicas: dict[str, int], block_size: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self._pools: dict[str, _Pool] = {}
        self._held: dict[str, tuple[str, int]] = {}  # request_id -> (replica, blocks)
        for name, num_blocks in replicas.items():
            self.add_replica(name, num_blocks)

    def add_replica(self, name: str, num_blocks: int) -> None:
        if name in self._pools:
            raise AlreadyExists(f"replica {name!r} is already known to the block manager")
        if num_blocks <= 0:
            raise ValueError(f"replica {name!r} needs at least one KV block, got {num_blocks}")
        self._pools[name] = _Pool(num_blocks)

    def remove_replica(self, name: str) -> None:
        """Forget a replica and every allocation on it (its worker is gone)."""
        self._pool(name)
        del self._pools[name]
        self._held = {rid: held for rid, held in self._held.items() if held[0] != name}

    @property
    def replicas(self) -> list[str]:
        return sorted(self._pools)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_blocks(self, replica: str) -> int:
        return self._pool(replica).num_blocks

    def num_free(self, replica: str) -> int:
        return self._pool(replica).free

    def capacity_tokens(self, replica: str) -> int:
        """The most tokens one sequence can ever hold on this replica (all of its blocks)."""
        return self._pool(replica).num_blocks * self.block_size

    def held_blocks(self, request_id: str) -> int:
        held = self._held.get(request_id)
        return 0 if held is None else held[1]

    def needed(self, req: Request, n_new_tokens: int) -> int:
        """Blocks beyond those already held to grow req's KV from num_computed to num_computed + n."""
        return max(0, self.blocks_for(req.num_computed + n_new_tokens) - self.held_blocks(req.request_id))

    def can_allocate(self, req: Request, n_new_tokens: int) -> bool:
        return self.needed(req, n_new_tokens) <= self.num_free(self._replica_of(req))

    def max_new_tokens(self, req: Request) -> int:
        """The most tokens req could add now, using its spare slots and every free block."""
        blocks = self.held_blocks(req.request_id) + self.num_free(self._replica_of(req))
        return max(0, blocks * self.block_size - req.num_computed)

    def allocate(self, req: Request, n_new_tokens: int) -> None:
        replica = self._replica_of(req)
        need = self.needed(req, n_new_tokens)
        pool = self._pool(replica)
        if need > pool.free:
            raise ResourceExhausted(
                f"replica {replica!r} has {pool.free} free KV blocks, request {req.request_id!r} needs {need}"
            )
        pool.used += need
        self._held[req.request_id] = (replica, self.held_blocks(req.request_id) + need)

    def free(self, req: Request) -> int:
        """Give back every block req holds; returns how many (0 when it held none)."""
        held = self._held.pop(req.request_id, None)
        if held is None:
            return 0
        replica, blocks = held
        self._pools[replica].used -= blocks
        return blocks

    def usage(self) -> dict[str, tuple[int, int]]:
        """{replica: (used blocks, free blocks)}, replicas by name."""
        return {name: (self._pools[name].used, self._pools[name].free) for name in self.replicas}

    def _replica_of(self, req: Request) -> str:
        held = self._held.get(req.request_id)
        assert held is None or held[0] == req.replica, f"{req.request_id} holds blocks on {held[0]}"
        if req.replica is None:
            raise ValueError(f"request {req.request_id!r} is not placed on a replica yet")
        return req.replica

    def _pool(self, replica: str) -> _Pool:
        pool = self._pools.get(replica)
        if pool is None:
            raise NotFound(f"unknown replica {replica!r}; known replicas: {', '.join(self.replicas) or 'none'}")
        return pool
