"""benchmarks/served_timing.py's pure parts: which worker lines count for a fragment and phase, and the
run-queue clock worker_timing.py reads."""

from __future__ import annotations

import time

import pytest

from genie.benchmarks import served_timing, worker_timing


def line(t: float, fid: str = "f", rows: int = 8, forward: float = 0.001) -> dict:
    return {"t": t, "fragment_id": fid, "rows": rows, "forward_s": forward, "forward_cpu_s": forward,
            "forward_runqueue_s": 0.0, "engine_s": 0.002, "queued_s": 0.0001, "servicer_s": 0.003}


def test_spans_take_the_fragments_batch_8_calls_inside_the_window_only() -> None:
    lines = [line(1.0, forward=0.004), line(2.0, forward=0.001), line(3.0, forward=0.002),
             line(2.5, fid="g"), line(2.5, rows=1), line(9.0, forward=0.5)]
    got = served_timing.spans(lines, "f", 1.0, 3.0)
    assert got["calls"] == 3 and got["forward_s"] == pytest.approx(0.002)
    assert got["fastest_forward_s"] == pytest.approx(0.001) and got["servicer_s"] == pytest.approx(0.003)
    assert served_timing.spans(lines, "f", 4.0, 5.0) == {"calls": 0, **dict.fromkeys(served_timing.SPANS),
                                                        "fastest_forward_s": None}


def test_the_run_queue_clock_only_moves_forward() -> None:
    before = worker_timing._runqueue_ns()
    time.sleep(0.001)
    assert worker_timing._runqueue_ns() >= before >= 0


def test_the_wrapper_needs_its_timings_file(capsys) -> None:
    with pytest.raises(SystemExit, match="--timings FILE"):
        worker_timing.main(["--listen", "127.0.0.1:0"])
