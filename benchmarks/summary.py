"""From per-request records to the numbers a run reports: latency percentiles, throughput, goodput, errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .client import RequestRecord
from .options import Slo
from .server_metrics import CacheUse

MAX_ERROR_MESSAGES = 5


@dataclass(frozen=True, slots=True)
class Stats:
    """Milliseconds; percentiles interpolate linearly between samples (numpy's default)."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    samples: int


@dataclass(frozen=True, slots=True)
class ErrorCount:
    message: str
    count: int


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int  # sent (or at least started) in this run
    completed: int
    errors: int
    duration_s: float  # from the first request sent to the last one finished
    request_throughput: float  # completed requests / s
    output_throughput: float  # generated tokens / s, completed requests only
    total_token_throughput: float  # (prompt + generated) tokens / s
    goodput: float | None  # completed requests / s that met every --goodput SLO; None without --goodput
    slo_met: int | None
    prompt_tokens: int
    output_tokens: int
    prompt_tokens_exact: bool  # False when some counts are word-count estimates (no usage from the server)
    output_tokens_exact: bool  # False when some counts are chunk counts (no usage from the server)
    ttft: Stats | None
    tpot: Stats | None
    itl: Stats | None
    e2e: Stats | None
    error_messages: tuple[ErrorCount, ...]  # the most frequent few
    # The server's prefix cache over the level, in prompt tokens; None when it exposes no such counters.
    prefix_cache_hit_rate: float | None = None
    prefix_cache_hit_tokens: int | None = None
    prefix_cache_query_tokens: int | None = None


def stats(seconds: Iterable[float]) -> Stats | None:
    values = np.asarray(list(seconds), dtype=np.float64) * 1000.0
    if values.size == 0:
        return None
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return Stats(float(values.mean()), float(p50), float(p90), float(p99), int(values.size))


def meets_slo(record: RequestRecord, slo: Slo) -> bool:
    """A request with a single output token has no TPOT, and so cannot miss that SLO."""
    checks = ((slo.ttft_ms, record.ttft_s), (slo.tpot_ms, record.tpot_s), (slo.e2e_ms, record.e2e_s))
    return all(limit is None or value is None or value * 1000.0 <= limit for limit, value in checks)


def _error_counts(records: Sequence[RequestRecord]) -> tuple[ErrorCount, ...]:
    counts = Counter(r.error for r in records if r.error is not None)
    return tuple(ErrorCount(message, count) for message, count in counts.most_common(MAX_ERROR_MESSAGES))


def _rate(count: float, duration_s: float) -> float:
    return count / duration_s if duration_s > 0 else 0.0


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: Slo, cache: CacheUse | None = None) -> Summary:
    done = [r for r in records if r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    slo_met = None if slo.empty else sum(meets_slo(r, slo) for r in done)
    return Summary(
        requests=len(records),
        completed=len(done),
        errors=len(records) - len(done),
        duration_s=duration_s,
        request_throughput=_rate(len(done), duration_s),
        output_throughput=_rate(output_tokens, duration_s),
        total_token_throughput=_rate(prompt_tokens + output_tokens, duration_s),
        goodput=None if slo_met is None else _rate(slo_met, duration_s),
        slo_met=slo_met,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        prompt_tokens_exact=all(r.prompt_tokens_from == "usage" for r in done),
        output_tokens_exact=all(r.output_tokens_from == "usage" for r in done),
        ttft=stats(r.ttft_s for r in done if r.ttft_s is not None),
        tpot=stats(t for r in done if (t := r.tpot_s) is not None),
        itl=stats(gap for r in done for gap in r.itl_s),
        e2e=stats(r.e2e_s for r in done if r.e2e_s is not None),
        error_messages=_error_counts(records),
        prefix_cache_hit_rate=cache.hit_rate if cache else None,
        prefix_cache_hit_tokens=cache.hit_tokens if cache else None,
        prefix_cache_query_tokens=cache.query_tokens if cache else None,
    )
