"""Dynamic batching in the style of Triton's dynamic batcher: pure, with the clock passed in.

Items wait in length buckets so a long item never pads a batch of short ones. A bucket is due when it
holds a full batch or its oldest item has waited `max_queue_delay_s`; among due buckets the one whose
oldest item came first goes next, so no bucket starves. A batch with room left is topped up with items of
shorter buckets (never longer ones, which would make the whole batch pay their length), nearest bucket first,
as long as real tokens stay at least `min_fill` of the padded batch: under load the waiting items spread over
several buckets, and a forward of a few items wastes most of what batching buys. One owner calls `add`, `take`
and `next_due`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from genie.errors import ResourceExhausted

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int  # items per batch at most (>= 1)
    max_queue_delay_s: float  # seconds the oldest waiting item may wait for a fuller batch (>= 0)
    max_queue: int  # waiting items at most; add() beyond it raises ResourceExhausted (429)
    # Ascending length bounds: length n goes to the first edge >= n, longer than the last edge to the
    # last bucket. () is one bucket for every length.
    bucket_edges: tuple[int, ...] = ()
    # Topping a batch up with shorter items stops where real tokens would fall below this share of the padded
    # batch (n * longest); 1.0 never mixes buckets.
    min_fill: float = 0.5

    def __post_init__(self) -> None:
        if not _is_int(self.max_batch_size) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        delay = self.max_queue_delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
            raise ValueError(f"max_queue_delay_s must be a finite number of seconds >= 0, got {delay!r}")
        if not _is_int(self.max_queue) or self.max_queue < self.max_batch_size:
            raise ValueError(
                f"max_queue must be an integer >= max_batch_size ({self.max_batch_size}), got {self.max_queue!r}; "
                "a smaller queue could never fill a batch"
            )
        fill = self.min_fill
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 < fill <= 1:
            raise ValueError(f"min_fill must be a share in (0, 1], got {fill!r}")
        edges = self.bucket_edges
        if not isinstance(edges, tuple) or not all(_is_int(e) and e >= 1 for e in edges):
            raise ValueError(f"bucket_edges must be a tuple of integers >= 1, got {edges!r}")
        if any(a >= b for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bucket_edges must be strictly ascending, got {edges!r}")

    def bucket_of(self, length: int) -> int:
        """The index of the bucket an item of `length` waits in."""
        if not self.bucket_edges:
            return 0
        return min(bisect.bisect_left(self.bucket_edges, length), len(self.bucket_edges) - 1)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def length_buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Doubling edges `smallest, 2*smallest, ...` up to the first one >= max_length: (16, 32, ..., 512)."""
    if not _is_int(smallest) or smallest < 1:
        raise ValueError(f"smallest must be an integer >= 1, got {smallest!r}")
    if not _is_int(max_length) or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    edges = [smallest]
    while edges[-1] < max_length:
        edges.append(edges[-1] * 2)
    return tuple(edges)


@dataclass(slots=True)
class _Waiting(Generic[T]):
    item: T
    length: int
    arrived: float
    order: int  # breaks ties between equal arrival times: first added, first taken


class DynamicBatcher(Generic[T]):
    """Holds waiting items by length bucket and hands out due batches, oldest first."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._buckets: list[deque[_Waiting[T]]] = [deque() for _ in range(max(1, len(policy.bucket_edges)))]
        self._count = 0
        self._order = itertools.count()

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, length: int, now: float) -> None:
        """Queues `item` of `length` tokens arriving at `now`; raises ResourceExhausted when the queue is full."""
        if not _is_int(length) or length < 0:
            raise ValueError(f"length must be an integer >= 0, got {length!r}")
        if self._count >= self.policy.max_queue:
            raise ResourceExhausted(
                f"the batching queue is full ({self.policy.max_queue} requests waiting); retry after a short wait"
            )
        self._buckets[self.policy.bucket_of(length)].append(_Waiting(item, length, now, next(self._order)))
        self._count += 1

    def take(self, now: float) -> list[T]:
        """One due batch, at most max_batch_size: the oldest due bucket's items, oldest first, topped up with
        shorter buckets' items while the batch stays `min_fill` full; [] when none is due."""
        due = [i for i, b in enumerate(self._buckets) if b and self._is_due(b, now)]
        if not due:
            return []
        first = min(due, key=lambda i: (self._buckets[i][0].arrived, self._buckets[i][0].order))
        bucket, size = self._buckets[first], self.policy.max_batch_size
        batch = [bucket.popleft() for _ in range(min(len(bucket), size))]
        longest = max(w.length for w in batch)
        tokens = sum(w.length for w in batch)
        for shorter in reversed(self._buckets[:first]):  # nearest first: the least padding
            kept: deque[_Waiting[T]] = deque()
            while shorter:
                waiting = shorter.popleft()
                fits = tokens + waiting.length >= self.policy.min_fill * longest * (len(batch) + 1)
                if len(batch) < size and fits:
                    tokens += waiting.length
                    batch.append(waiting)
                else:
                    kept.append(waiting)
            shorter.extend(kept)  # in their order of arrival still
            if len(batch) == size:
                break
        self._count -= len(batch)
        return [w.item for w in batch]

    def next_due(self) -> float | None:
        """The earliest time a bucket is due; a full bucket's is its oldest arrival (due now). None when empty."""
        times = [self._due_at(b) for b in self._buckets if b]
        return min(times) if times else None

    def remove(self, item: T) -> bool:
        """Drops a waiting `item` (by identity; its client went away). True if it was waiting."""
        for bucket in self._buckets:
            for i, waiting in enumerate(bucket):
                if waiting.item is item:
                    del bucket[i]
                    self._count -= 1
                    return True
        return False

    def _is_due(self, bucket: deque[_Waiting[T]], now: float) -> bool:
        # Compared with _due_at's sum, not `now - arrived`: take(next_due()) must never come back empty.
        return len(bucket) >= self.policy.max_batch_size or now >= bucket[0].arrived + self.policy.max_queue_delay_s

    def _due_at(self, bucket: deque[_Waiting[T]]) -> float:
        oldest = bucket[0].arrived
        return oldest if len(bucket) >= self.policy.max_batch_size else oldest + self.policy.max_queue_delay_s
