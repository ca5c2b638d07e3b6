"""What the router loop publishes to /metrics between steps: queue, phases, KV blocks per replica, the prefix
cache's hits, handoffs in flight, and the prompt tokens each step wrote to KV."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from .metrics import Metrics
from .scheduler import Scheduler
from .step_plan import ScheduledSeq
from .submission import Tracked


# While busy, the gauges are published at most this often (s of the router's clock), and always when it goes
# idle: publishing reads every live request and KV pool, which cost more router CPU per token than the rest of a
# batch-1 step's scheduling (issue 16); a scrape every few seconds cannot tell. A publish skipped within the
# period is made up at its end by a timer, so a state the loop then waits in (a handoff to a stopped worker, a
# long step) reaches /metrics even though no loop turn comes to publish it.
GAUGE_PERIOD_S = 0.25


class Gauges:
    """The router loop's gauges, published on a period while it is busy (`publish`) and at once when asked."""

    def __init__(self, metrics: Metrics, scheduler: Scheduler, clock: Callable[[], float],
                 handoffs: Callable[[], int]) -> None:
        self.metrics, self.scheduler, self.clock, self.handoffs = metrics, scheduler, clock, handoffs
        self._at = float("-inf")  # when they were last published
        self._counted = (0, 0)  # prefix-cache tokens (queried, hit) already in the metrics
        self._trailing: asyncio.TimerHandle | None = None  # the publish owed for one skipped in the period

    def publish(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._at >= GAUGE_PERIOD_S:
            self._at = now
            self._counted = publish_gauges(self.metrics, self.scheduler, self.handoffs(), self._counted)
            self.close()
        elif self._trailing is None:
            self._trailing = asyncio.get_running_loop().call_later(GAUGE_PERIOD_S, self._owed)

    def _owed(self) -> None:
        self._trailing = None
        self.publish(force=True)

    def close(self) -> None:
        """Cancels the owed publish, if any (the router loop ends, or a publish just made it)."""
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None


def publish_gauges(m: Metrics, scheduler: Scheduler, handoffs: int, counted: tuple[int, int]) -> tuple[int, int]:
    """Sets every gauge; adds the prefix-cache tokens (queried, hit) beyond `counted` and returns the new totals."""
    m.queue_depth.set(scheduler.num_waiting())
    m.handoffs_in_flight.set(handoffs)
    m.running.set(scheduler.num_running())
    for phase, count in scheduler.counts_by_phase().items():
        m.by_phase.labels(phase).set(count)
    for name, (used, free) in scheduler.kv_usage().items():
        m.kv_used.labels(name).set(used)
        m.kv_free.labels(name).set(free)
        cache = scheduler.blocks.stats(name)
        m.kv_cached.labels(name).set(cache["cached"])
        m.kv_shared.labels(name).set(cache["shared"])
        m.kv_evictable.labels(name).set(cache["evictable"])
    blocks = scheduler.blocks
    queried, hit = blocks.queried_tokens - counted[0], blocks.hit_tokens - counted[1]
    if queried:
        m.prefix_queries.inc(queried)
        m.prefix_hits.inc(hit)
    return blocks.queried_tokens, blocks.hit_tokens


def prefilled_tokens(batch: list[ScheduledSeq], tracked: Mapping[str, Tracked]) -> int:
    """Prompt tokens this batch put into the KV cache (a preempted request's second prefill counts again)."""
    prefilled = 0
    for seq in batch:
        entry = tracked.get(seq.request_id)
        if entry is not None:
            prefilled += max(0, min(seq.position + seq.num_tokens, entry.submission.prompt_tokens) - seq.position)
    return prefilled
