"""Prometheus metrics of one genie-serve process, on a registry of its own (not the global default)."""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("genie_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("genie_time_per_output_token_seconds", "Time per output token after the first", buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("genie_request_latency_seconds", "End-to-end request latency", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("genie_queue_depth", "Requests waiting to be scheduled", registry=r)
        self.running = Gauge("genie_running_requests", "Requests in prefill or decode", registry=r)
        self.by_phase = Gauge("genie_requests_by_phase", "Live requests by phase", ["phase"], registry=r)
        self.kv_used = Gauge("genie_kv_blocks_used", "KV cache blocks in use", ["replica"], registry=r)
        self.kv_free = Gauge("genie_kv_blocks_free", "KV cache blocks free", ["replica"], registry=r)
        self.kv_cached = Gauge("genie_kv_blocks_cached", "KV blocks whose prefix a new request may reuse", ["replica"], registry=r)
        self.kv_shared = Gauge("genie_kv_blocks_shared", "Cached KV blocks held by two requests or more", ["replica"], registry=r)
        self.kv_evictable = Gauge(
            "genie_kv_blocks_evictable", "Cached KV blocks no request holds (counted free)", ["replica"], registry=r
        )
        self.prefix_queries = Counter(
            "genie_prefix_cache_queries", "Tokens of admitted requests looked up in the prefix cache", registry=r
        )
        self.prefix_hits = Counter("genie_prefix_cache_hits", "Of those, tokens found cached (not computed again)", registry=r)
        self.tokens_per_s = Gauge("genie_generation_tokens_per_second", "Generated tokens per second over the last 10 s", registry=r)
        self.generated = Counter("genie_generated_tokens", "Generated tokens", registry=r)
        self.prompt_tokens = Counter("genie_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.requests = Counter("genie_requests", "Finished requests by reason", ["finish_reason"], registry=r)
        self.rejected = Counter("genie_requests_rejected", "Requests refused by admission control", registry=r)
        self.preemptions = Counter(
            "genie_preemptions", "Requests whose KV was freed to make room, to be prefilled again", registry=r
        )
        self.migrations = Counter("genie_migrations", "Requests moved to another replica after theirs failed", registry=r)
        self.migration_failures = Counter(
            "genie_migration_failures", "Requests ended because their replica failed and no move was left", registry=r
        )
        self.handoffs = Counter(
            "genie_kv_handoffs", "KV handoffs prefill -> decode worker, by outcome (delivered, or fallback: the decode "
            "replica prefilled the request itself)", ["outcome"], registry=r)
        self.handoffs_in_flight = Gauge("genie_kv_handoffs_in_flight", "KV handoffs sent and not yet answered", registry=r)
        self.handoff_bytes = Counter("genie_kv_handoff_bytes", "KV bytes sent worker to worker, as measured", registry=r)
        self.handoff_predicted_bytes = Counter(
            "genie_kv_handoff_predicted_bytes", "KV bytes the profile predicts for those handoffs (bytes/token x tokens)",
            registry=r)
        self.handoff_cached_tokens = Counter(
            "genie_kv_handoff_cached_tokens", "Prompt tokens not sent in a handoff: the decode worker had them cached",
            registry=r)
        self.handoff_seconds = Histogram("genie_kv_handoff_seconds", "Time of one KV handoff, export to acknowledgement",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.restarts = Counter("genie_worker_restarts", "Replicas brought back after a failure", ["replica"], registry=r)
        self.worker_up = Gauge("genie_worker_up", "1 while a worker answers, 0 once it is lost", ["worker"], registry=r)
        self.batch_size = Histogram(
            "genie_batch_size", "Requests per forward of a stateless model", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self._window: deque[tuple[float, int]] = deque()
        self._window_tokens = 0  # the sum of the window's counts, kept as it moves (the router calls this per step)

    def observe_tokens(self, now: float, count: int) -> None:
        """Counts generated tokens and updates the 10-second tokens/s gauge."""
        self.generated.inc(count)
        self._window.append((now, count))
        self._window_tokens += count
        while now - self._window[0][0] > 10.0:
            self._window_tokens -= self._window.popleft()[1]
        span = max(now - self._window[0][0], 1e-3) if len(self._window) > 1 else 10.0
        self.tokens_per_s.set(self._window_tokens / span)

    def render(self) -> bytes:
        return generate_latest(self.registry)
