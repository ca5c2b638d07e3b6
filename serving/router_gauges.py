"""What the router loop publishes to /metrics between steps: queue, phases, KV blocks per replica, the prefix
cache's hits, handoffs in flight, and the prompt tokens each step wrote to KV."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .metrics import Metrics
from .scheduler import Scheduler
from .step_plan import ScheduledSeq
from .submission import Tracked


# While busy, the gauges are published at most this often (s of the router's clock), and always when it goes
# idle: publishing reads every live request and KV pool, which cost more router CPU per token than the rest of a
# batch-1 step's scheduling (issue 16); a scrape every few seconds cannot tell.
GAUGE_PERIOD_S = 0.25


class Gauges:
    """The router loop's gauges, published on a period while it is busy (`publish`) and at once when asked."""

    def __init__(self, metrics: Metrics, scheduler: Scheduler, clock: Callable[[], float]) -> None:
        self.metrics, self.scheduler, self.clock = metrics, scheduler, clock
        self._at = float("-inf")  # when they were last published
        self._counted = (0, 0)  # prefix-cache tokens (queried, hit) already in the metrics

    def publish(self, handoffs: int, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._at >= GAUGE_PERIOD_S:
            self._at = now
            self._counted = publish_gauges(self.metrics, self.scheduler, handoffs, self._counted)


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
