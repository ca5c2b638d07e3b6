"""The pure parts of benchmarks/stateless_serve.py with made-up numbers: percentiles, rows, targets, table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genie.benchmarks.stateless_report import (
    SENTENCES, Row, batch_totals, percentile, table, targets,
)


def row(system: str, setting: str, threads: str, per_s: float, p50_ms: float = 10.0, errors: int = 0) -> Row:
    """A row of 100 sentences at `per_s` whose latencies all equal `p50_ms`."""
    return Row(system, setting, threads, 100, 100 / per_s, (p50_ms / 1000,) * 5, errors=errors)


def run(served_32: float = 400.0, off_32: float = 100.0, served_1_ms: float = 14.0, errors: int = 0) -> list[Row]:
    return [
        row("in-process", "batch 1", "1", 70.0, p50_ms=10.0),
        row("in-process", "batch 32", "1", 150.0, p50_ms=200.0),
        row("in-process", "batch 1", "2", 90.0, p50_ms=8.0),
        row("in-process", "batch 32", "2", 450.0, p50_ms=70.0),
        row("genie-serve", "1 client", "2 x 1", 60.0, p50_ms=served_1_ms),
        row("genie-serve", "32 clients", "2 x 1", served_32, errors=errors),
        row("genie-serve, no batching", "32 clients", "2 x 1", off_32),
    ]


def test_percentile_interpolates_like_numpy():
    xs = [0.5, 3.0, 1.0, 7.0, 2.0, 11.0, 4.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_row_throughput_and_percentiles_in_ms():
    r = Row("genie-serve", "8 clients", "2 x 1", 200, 4.0, (0.010, 0.020, 0.030))
    assert r.throughput == 50.0
    assert r.p50_ms == pytest.approx(20.0)
    assert r.p99_ms == pytest.approx(29.8)


def test_all_targets_met():
    checks = targets(run(), all_threads=2, worker_threads=1, many=32)
    assert [c.met for c in checks] == [True, True, True]
    assert "400.0 vs 450.0 sentences/s (2 threads) = 0.89x" in checks[0].line()
    assert "= 4.00x" in checks[1].detail
    assert "14.00 vs 10.00 ms (1 thread) = +4.00 ms" in checks[2].detail


def test_each_target_can_miss_on_its_own():
    assert [c.met for c in targets(run(served_32=300.0), 2, 1, 32)] == [False, True, True]  # 0.67x
    assert [c.met for c in targets(run(off_32=150.0), 2, 1, 32)] == [True, False, True]  # 2.67x
    assert [c.met for c in targets(run(served_1_ms=15.5), 2, 1, 32)] == [True, True, False]  # +5.5 ms
    assert "NOT met" in targets(run(served_32=300.0), 2, 1, 32)[0].line()


def test_failed_requests_are_never_met():
    checks = targets(run(errors=3), 2, 1, 32)
    assert checks[0].met is False and checks[1].met is False
    assert "3 failed requests" in checks[0].detail


def test_missing_rows_are_not_measured():
    rows = [r for r in run() if r.setting != "1 client"]
    checks = targets(rows, 2, 1, 32)
    assert checks[2].met is None and "not measured" in checks[2].line()
    assert [c.met for c in targets(run(), 2, 1, many=8)] == [None, None, True]


def test_table_has_a_header_and_one_line_per_row():
    lines = table(run())
    assert lines[0].split()[:3] == ["system", "setting", "threads"]
    assert len(lines) == 1 + len(run())
    assert "450.0" in lines[4] and lines[4].rstrip().endswith("-")  # no CPU stall given


def test_batch_totals_reads_the_histogram_of_one_model():
    text = (
        'genie_batch_size_bucket{le="1.0",model="minilm"} 0.0\n'
        'genie_batch_size_count{model="minilm"} 4.0\n'
        'genie_batch_size_sum{model="minilm"} 50.0\n'
        'genie_batch_size_sum{model="other"} 7.0\n'
    )
    assert batch_totals(text, "minilm") == (50.0, 4.0)
    assert batch_totals("", "minilm") == (0.0, 0.0)


def test_sentences_are_varied_and_5_to_40_words():
    assert len(SENTENCES) == len(set(SENTENCES)) == 64
    assert all(5 <= len(s.split()) <= 40 for s in SENTENCES)
