"""`genie-bench compare`'s table, checks, results document and plot, from hand-made rows (no model runs)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
import torch

from genie.benchmarks.compare_options import DEFAULT, CompareOptions
from genie.benchmarks.compare_report import checks, document, table
from genie.benchmarks.compare_setup import Setup
from genie.benchmarks.roofline import Roofline, params_per_token
from genie.benchmarks.rows import BLIND_KV, BLIND_RECOMPUTE, ENGINE, HF, SERVE, Level, Row
from genie.benchmarks.workload import ModelShape, Workload, kv_budget_bytes

SHAPE = ModelShape(layers=30, hidden=576, kv_heads=3, head_dim=64, vocab=49152, tied_embeddings=True)
WORK = Workload((), ((1,) * 40, (2,) * 100, (3,) * 10), 64, True, frozenset({2}))
ROOF = Roofline(read_gbps=10.0, copy_gbps=8.0, tflops=0.5, dtype="bfloat16", weight_bytes_per_step=250_000_000,
                params_per_token=125_000_000)


def setup_for(tmp_path: Path) -> Setup:
    opts = CompareOptions(sizes=DEFAULT, quick=False, ignore_eos=True, input_len=None, dtype="auto", threads=2, seed=0,
                          systems=("hf", "engine", "serve", "blind"), registry_home=None, output_dir=tmp_path,
                          plot=False, timeout_s=900.0)
    return Setup(opts, tmp_path, torch.bfloat16, SHAPE, WORK)


ROWS = [
    Row(HF, "one by one", 1, 4, 256, 32.0),
    Row(HF, "static batch 32", 32, 32, 2048, 64.0),
    Row(ENGINE, "32 streams", 32, 32, 2048, 16.0, ttft_p50_ms=900.0, tpot_p50_ms=120.0),
    Row(SERVE, "1 stream", 1, 4, 256, 20.0, 80.0, 60.0, link_bytes_sent=12_000, link_bytes_received=4_000),
    Row(SERVE, "32 streams", 32, 32, 2048, 20.48, 900.0, 150.0, link_bytes_sent=80_000, link_bytes_received=40_000),
    Row(BLIND_KV, "1 stream", 1, 4, 256, 40.0, link_bytes_sent=1_000_000_000, link_bytes_received=1_000_000_000),
    Row(BLIND_KV, "32 streams", 32, 32, 2048, 50.0, link_bytes_sent=8_000_000_000, link_bytes_received=8_000_000_000),
    Level.streaming(BLIND_RECOMPUTE, 8, WORK).failed(RuntimeError("worker at 127.0.0.1:1 died\ntraceback...")),
]


def test_rows_derive_rates_and_bytes_per_token() -> None:
    serve = ROWS[4]
    assert serve.tokens_per_s == pytest.approx(100.0)
    assert serve.bytes_per_token == pytest.approx(120_000 / 2048)
    assert ROWS[0].bytes_per_token is None  # no worker link in-process
    failed = ROWS[-1]
    assert not failed.ok and failed.tokens_per_s is None and failed.prompts == 3
    assert failed.error == "RuntimeError: worker at 127.0.0.1:1 died"  # first line only


def test_checks_compare_genie_serve_with_blind_kv_and_hf() -> None:
    by_name = {c.name: c for c in checks(ROWS, 32)}
    at_32 = by_name["genie-serve worker-link bytes per token vs blind-kv at 32 streams"]
    assert at_32.met and at_32.value == pytest.approx((120_000 / 2048) / (16e9 / 2048))
    speed = by_name["genie-serve HTTP at 32 streams vs HF generate one by one"]
    assert speed.value == pytest.approx(100.0 / 8.0) and speed.met
    slow = [r if r.system != SERVE or r.streams != 32 else Row(SERVE, "32 streams", 32, 32, 2048, 40.96,
            link_bytes_sent=80_000, link_bytes_received=40_000) for r in ROWS]
    assert not {c.name: c for c in checks(slow, 32)}[speed.name].met  # 50 tok/s is 6.25x: not met


def test_a_speedup_measured_under_contention_is_flagged() -> None:
    busy = [dataclasses.replace(r, cpu_stall=0.9 if r.system == HF else 0.05) for r in ROWS]
    speed = checks(busy, 32)[2]
    assert speed.met and speed.contended and "UNRELIABLE: the two rows ran with 5% and 90% CPU stall" in speed.detail
    quiet = [dataclasses.replace(r, cpu_stall=0.05) for r in ROWS]
    assert not checks(quiet, 32)[2].contended


def test_a_missing_row_leaves_its_check_unmeasured() -> None:
    without_blind = [r for r in ROWS if r.system != BLIND_KV]
    found = {c.name: c for c in checks(without_blind, 32)}
    check = found["genie-serve worker-link bytes per token vs blind-kv at 32 streams"]
    assert check.met is None and check.value is None


def test_table_shows_every_row_the_roofline_and_failures(tmp_path) -> None:
    text = table(setup_for(tmp_path), ROWS, ROOF, checks(ROWS, 32))
    assert "read bandwidth 10.0 GB/s (copy 8.0 GB/s)" in text and "40.0 tok/s at batch 1" in text
    serve_line = next(row for row in text.splitlines() if row.startswith("genie-serve HTTP") and "32 streams" in row)
    assert "100.0" in serve_line and "59 B" in serve_line
    assert "7.8%" in serve_line  # 100 tok/s over min(32 * 40, 0.5e12 / 2.5e8 = 2000) = 1280 tok/s
    assert "blind-recompute, 8 streams: failed: RuntimeError: worker at 127.0.0.1:1 died" in text
    assert "(target <= 0.1%): met" in text and "(target >= 10x): met" in text


def test_results_document_is_json_with_rows_and_checks(tmp_path) -> None:
    started = dt.datetime(2026, 11, 21, 9, 0, tzinfo=dt.UTC)
    doc = json.loads(json.dumps(document(setup_for(tmp_path), ROWS, ROOF, "complete", started)))
    assert doc["tool"] == "genie-bench compare" and doc["status"] == "complete"
    assert len(doc["rows"]) == len(ROWS) and doc["rows"][4]["tokens_per_s"] == pytest.approx(100.0)
    assert doc["roofline"]["decode_bound_batch1_tok_s"] == pytest.approx(40.0)
    # bytes at 32 and 1, 12.5x HF one by one; against static batches stated (None); 100 tok/s is 5% of the compute
    # bound (0.5e12 / 2.5e8 = 2000) and 20 tok/s 50% of the one-stream bandwidth bound (40): neither met
    assert [c["met"] for c in doc["checks"]] == [True, True, True, None, False, False]
    assert doc["checks"][3]["value"] == pytest.approx(100.0 / 32.0)
    assert doc["config"]["sizes"]["streams"] == 32 and doc["model"]["prompt_tokens"] == [40, 100, 10]


def test_plot_draws_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from genie.benchmarks.compare_plot import save_plot

    doc = json.loads(json.dumps(document(setup_for(tmp_path), ROWS, ROOF, "complete", dt.datetime.now(dt.UTC))))
    out = save_plot(doc, tmp_path / "compare.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kv_budget_holds_the_longest_requests_at_once() -> None:
    per_token = 30 * 2 * 3 * 64 * 2  # SmolLM2 in bfloat16: 23,040 bytes
    long = Workload((), ((1,) * 1000, (2,) * 2000, (3,) * 10), 64, True, frozenset())
    assert kv_budget_bytes(long, 2, SHAPE, 2) == int((2064 + 1064) * per_token * 1.25)
    assert kv_budget_bytes(long, 1, SHAPE, 2) == int(2064 * per_token * 1.25)
    assert kv_budget_bytes(WORK, 3, SHAPE, 2) == 32 << 20  # small runs get the floor


def test_a_request_finishes_at_its_length_or_at_eos_when_eos_counts() -> None:
    assert not WORK.finished([2, 2]) and WORK.finished([5] * 64)  # ignore_eos: EOS id 2 does not stop it
    stops = Workload((), (), 64, False, frozenset({2}))
    assert stops.finished([7, 2]) and not stops.finished([7, 3])


def test_weights_read_per_decode_step(smollm2_dir, gpt2_tiny_dir) -> None:
    # SmolLM2 ties its head to the embedding: all of its 134.5M weights are read every step.
    assert params_per_token(smollm2_dir) == 134_515_008
    # GPT-2 (tied too): everything but the position table and the token embedding, plus the head.
    tiny = 4 * (128 * 384 + 384 + 128 * 128 + 128 + 2 * 128 * 512 + 512 + 128 + 4 * 128) + 2 * 128
    assert params_per_token(gpt2_tiny_dir) == tiny + 1000 * 128


def test_cpu_stall_is_the_stalled_share_of_the_wall_time(tmp_path, monkeypatch) -> None:
    from genie.benchmarks import pressure

    psi = tmp_path / "cpu"
    psi.write_text("some avg10=1.00 avg60=2.00 avg300=3.00 total=1000000\nfull avg10=0.00 total=0\n")
    monkeypatch.setattr(pressure, "PSI_CPU", psi)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(pressure.time, "perf_counter", lambda: next(clock))
    stall = pressure.CpuStall()
    psi.write_text("some avg10=50.00 avg60=2.00 avg300=3.00 total=1500000\nfull avg10=0.00 total=0\n")
    assert stall.share() == pytest.approx(0.25)  # 0.5 s stalled in 2 s


def test_cpu_stall_is_none_where_the_kernel_does_not_report_it(tmp_path, monkeypatch) -> None:
    from genie.benchmarks import pressure

    monkeypatch.setattr(pressure, "PSI_CPU", tmp_path / "missing")
    assert pressure.CpuStall().share() is None


def test_genie_serve_is_checked_against_the_compute_and_the_bandwidth_bound() -> None:
    fast = [r if r.system != SERVE else dataclasses.replace(r, duration_s=r.output_tokens / (1300.0 if r.streams == 32
            else 33.0)) for r in ROWS]
    found = {c.name: c for c in checks(fast, 32, ROOF)}
    compute = found["genie-serve at 32 streams vs the compute bound"]
    bandwidth = found["genie-serve at 1 streams vs the bandwidth bound"]
    assert compute.met and compute.value == pytest.approx(1300.0 / 2000.0)  # 65% >= 60%
    assert bandwidth.met and bandwidth.value == pytest.approx(33.0 / 40.0)  # 82.5% >= 80%
    assert "1,300.0 vs 2,000.0 tok/s = 65.0%" in compute.detail
    static = found["genie-serve HTTP at 32 streams vs HF generate in static batches of 32"]
    assert static.met is None and static.value == pytest.approx(1300.0 / 32.0)
    unmeasured = {c.name: c for c in checks(fast, 32)}  # no roofline
    assert unmeasured[compute.name].met is None and unmeasured[compute.name].value is None


def test_a_bound_measured_under_contention_makes_its_check_unreliable() -> None:
    fast = [r if r.system != SERVE else dataclasses.replace(r, duration_s=r.output_tokens / 1300.0, cpu_stall=0.05)
            for r in ROWS]
    busy_roof = dataclasses.replace(ROOF, cpu_stall=0.6)  # the bound itself was measured while others ran
    check = {c.name: c for c in checks(fast, 32, busy_roof)}["genie-serve at 32 streams vs the compute bound"]
    assert check.contended and "UNRELIABLE: measured with CPU stall (the roofline with 60%)" in check.detail
    quiet = {c.name: c for c in checks(fast, 32, dataclasses.replace(ROOF, cpu_stall=0.02))}
    assert not quiet["genie-serve at 32 streams vs the compute bound"].contended
