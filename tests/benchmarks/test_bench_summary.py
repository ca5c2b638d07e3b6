"""Run summaries from hand-made request records: percentiles, TPOT, throughput, goodput, error counts."""

from __future__ import annotations

import pytest

from genie.benchmarks.client import RequestRecord
from genie.benchmarks.options import Slo
from genie.benchmarks.summary import meets_slo, stats, summarize


def ok(ttft: float, e2e: float, tokens: int, prompt: int = 10, itl: tuple[float, ...] = ()) -> RequestRecord:
    return RequestRecord("p", 0.0, ttft_s=ttft, e2e_s=e2e, itl_s=itl, output_tokens=tokens, prompt_tokens=prompt)


def failed(message: str) -> RequestRecord:
    return RequestRecord("p", 0.0, error=message)


def test_tpot_excludes_the_first_token():
    assert ok(0.1, 1.1, 11).tpot_s == pytest.approx(0.1)
    assert ok(0.1, 0.1, 1).tpot_s is None


def test_stats_in_milliseconds_with_linear_percentiles():
    s = stats([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.samples == 100
    assert stats([]) is None


def test_summary_counts_throughput_over_the_run_duration():
    records = [ok(0.1, 1.1, 11, itl=(0.1,) * 10), ok(0.3, 2.3, 21, itl=(0.1,) * 20), failed("HTTP 500: boom")]
    s = summarize(records, duration_s=4.0, slo=Slo())
    assert (s.requests, s.completed, s.errors) == (3, 2, 1)
    assert s.request_throughput == pytest.approx(0.5)
    assert s.output_throughput == pytest.approx(32 / 4)
    assert s.total_token_throughput == pytest.approx((32 + 20) / 4)
    assert s.ttft.mean_ms == pytest.approx(200)
    assert s.tpot.mean_ms == pytest.approx(100)
    assert s.itl.samples == 30
    assert s.goodput is None and s.slo_met is None
    assert [(e.message, e.count) for e in s.error_messages] == [("HTTP 500: boom", 1)]


def test_goodput_counts_requests_that_meet_every_slo():
    fast, slow_first, slow_tokens = ok(0.1, 1.1, 11), ok(0.9, 1.9, 11), ok(0.1, 5.1, 11)
    slo = Slo(ttft_ms=500, tpot_ms=200)
    assert [meets_slo(r, slo) for r in (fast, slow_first, slow_tokens)] == [True, False, False]
    s = summarize([fast, slow_first, slow_tokens], duration_s=2.0, slo=slo)
    assert s.slo_met == 1
    assert s.goodput == pytest.approx(0.5)


def test_all_failed_gives_no_latency_and_ranked_error_messages():
    records = [failed("a")] * 3 + [failed("b")]
    s = summarize(records, duration_s=1.0, slo=Slo(ttft_ms=1))
    assert s.completed == 0 and s.errors == 4
    assert s.ttft is None and s.tpot is None and s.e2e is None
    assert s.goodput == 0.0
    assert [(e.message, e.count) for e in s.error_messages] == [("a", 3), ("b", 1)]


def test_estimated_token_counts_are_flagged():
    chunks = RequestRecord("p", 0.0, ttft_s=0.1, e2e_s=0.2, output_tokens=3, output_tokens_from="chunks")
    s = summarize([chunks, ok(0.1, 0.2, 3)], duration_s=1.0, slo=Slo())
    assert not s.output_tokens_exact and s.prompt_tokens_exact
