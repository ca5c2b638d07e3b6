"""A least-recently-used map bounded by bytes: programs and weight bindings on a worker."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Keeps values while their sizes add up to at most `budget` bytes, dropping the least recently used first.

    A value larger than the whole budget is refused by `fits`, so `put` never half-succeeds."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def values(self) -> list[V]:
        return [value for value, _ in self._items.values()]

    def fits(self, size: int) -> bool:
        return size <= self.budget

    def put(self, key: str, value: V, size: int) -> list[str]:
        """Stores `value`; returns the keys evicted to make room."""
        assert self.fits(size), "check fits() first"
        self.pop(key)
        evicted = []
        while self._items and self.used + size > self.budget:
            old, (_, old_size) = self._items.popitem(last=False)
            self.used -= old_size
            evicted.append(old)
        self._items[key] = (value, size)
        self.used += size
        return evicted

    def pop(self, key: str) -> V | None:
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.used -= item[1]
        return item[0]
