"""Plots of saved runs: labelled axes, one line per system, and `genie-bench plot` combining files."""

from __future__ import annotations

import json

import pytest
from bench_helpers import run_cli, stderr_lines

from genie.benchmarks.plot import build_figure, load_results, series_of

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_doc(label: str, mode: str = "concurrency", scale: float = 1.0) -> dict:
    """A results document as genie-bench serve writes it, with made-up numbers for the plotting code."""
    def stats(ms: float) -> dict:
        return {"mean_ms": ms, "p50_ms": ms, "p90_ms": 1.5 * ms, "p99_ms": 2 * ms, "samples": 10}

    levels = []
    for level in (1, 8, 32):
        summary = {"completed": 10, "ttft": stats(10 * level * scale), "tpot": stats(5 * scale),
                   "output_throughput": 100.0 * level / scale, "request_throughput": level / scale,
                   "goodput": None}
        levels.append({"mode": mode, "level": level, "summary": summary})
    return {"tool": "genie-bench serve", "label": label, "config": {"model": "m", "url": "http://x"},
            "levels": levels}


def test_figure_has_labelled_axes_and_one_line_per_system():
    fig = build_figure([fake_doc("genie-serve"), fake_doc("vllm", scale=0.5)])
    axes = fig.get_axes()
    assert len(axes) == 4
    for ax in axes:
        assert ax.get_xlabel() == "concurrency (requests in flight)"
        assert ax.get_ylabel() and ax.get_title()
    ttft, tpot, tokens, requests = axes
    assert ttft.get_ylabel() == "TTFT (ms)" and tpot.get_ylabel() == "TPOT (ms)"
    assert len(ttft.get_lines()) == 2 * 3  # p50, p90, p99 per system
    assert [t.get_text() for t in tokens.get_legend().get_texts()] == ["genie-serve", "vllm"]
    assert list(tokens.get_lines()[1].get_ydata()) == [200.0, 1600.0, 6400.0]
    assert fig.get_suptitle() == "genie-bench serve: m"


def test_rate_runs_get_a_rate_axis_and_cannot_mix_with_concurrency():
    fig = build_figure([fake_doc("a", mode="rate")])
    assert fig.get_axes()[0].get_xlabel() == "request rate (requests/s)"
    with pytest.raises(ValueError, match="plot them separately"):
        series_of([fake_doc("a"), fake_doc("b", mode="rate")])


def test_same_label_twice_is_told_apart():
    assert [s.label for s in series_of([fake_doc("a"), fake_doc("a")])] == ["a", "a (2)"]


def test_plot_command_combines_runs_into_one_png(tmp_path):
    paths = []
    for label in ("genie-serve", "llama.cpp"):
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(fake_doc(label)))
        paths.append(str(path))
    out = tmp_path / "both.png"
    proc = run_cli("plot", *paths, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    assert len(load_results([tmp_path / "genie-serve.json", tmp_path / "llama.cpp.json"])) == 2


def test_plot_command_rejects_files_it_did_not_write(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text('{"hello": 1}')
    for path in (bad, tmp_path / "absent.json"):
        proc = run_cli("plot", str(path))
        assert proc.returncode == 2
        [line] = stderr_lines(proc)
        assert "genie-bench plot: error:" in line and str(path) in line
