"""`genie-bench compare` end to end: bad flags, a failing system, and the whole pipeline on SmolLM2.

The real runs use tiny sizes (1-2 prompts, 4 tokens): they check the pipeline and its accounting, not speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bench_helpers import run_cli, stderr_lines

from genie.benchmarks import cli, hf_baseline

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache")) / "genie-home-bench"
TINY = ["--num-prompts", "2", "--serial-prompts", "1", "--streams", "2", "--recompute-streams", "2",
        "--output-len", "4", "--ignore-eos", "--registry-home", str(HOME)]


def only_compare_result(out_dir: Path) -> dict:
    files = sorted(out_dir.glob("compare-*.json"))
    assert len(files) == 1, f"expected one results file in {out_dir}, found {files}"
    return json.loads(files[0].read_text())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--streams", "0"], "--streams must be a positive integer, got 0"),
        (["--num-prompts", "4", "--streams", "8"], "--num-prompts (4) must be at least --streams (8)"),
        (["--serial-prompts", "9", "--num-prompts", "8", "--streams", "8"], "--serial-prompts (9) must not exceed"),
        (["--systems", "hf,vllm"], "--systems takes a comma-separated subset of hf,engine,serve,blind"),
        (["--dtype", "int8"], "--dtype must be one of auto, bfloat16, float32, float16"),
        (["--input-len", "-3"], "--input-len must be a positive integer"),
        (["--timeout", "0"], "--timeout must be a positive number of seconds"),
        (["--streams", "many"], "argument --streams: invalid int value"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(flags: list[str], message: str, tmp_path) -> None:
    proc = run_cli("compare", *flags, "--output", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert message in lines[-1] and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_failing_system_fails_its_rows_and_the_run_goes_on(tmp_path, monkeypatch, capsys) -> None:
    def broken(model_dir, dtype):
        raise OSError("no model here (injected by the test)")

    monkeypatch.setattr(hf_baseline, "load_model", broken)
    code = cli.main(["compare", *TINY, "--systems", "hf,engine", "--output", str(tmp_path)])
    assert code == 1
    doc = only_compare_result(tmp_path)
    assert doc["status"] == "complete"
    by_system = {(r["system"], r["setting"]): r for r in doc["rows"]}
    for setting in ("one by one", "static batch 2"):
        row = by_system[("HF generate", setting)]
        assert row["error"] == "OSError: no model here (injected by the test)" and row["output_tokens"] == 0
    for setting, prompts in (("1 stream", 1), ("2 streams", 2)):
        assert by_system[("engine in-process", setting)]["output_tokens"] == 4 * prompts
    out = capsys.readouterr().out
    assert "HF generate, one by one: failed: OSError: no model here" in out
    assert "not measured" in out  # the checks that need the missing rows say so


@pytest.mark.slow
def test_compare_runs_every_system_and_counts_worker_link_bytes(tmp_path) -> None:
    proc = run_cli("compare", *TINY, "--output", str(tmp_path), "--plot", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = only_compare_result(tmp_path)
    assert doc["status"] == "complete" and doc["model"]["dtype"] in ("bfloat16", "float32")
    rows = {(r["system"], r["setting"]): r for r in doc["rows"]}
    assert len(rows) == 10
    for row in rows.values():
        assert row["error"] is None and row["output_tokens"] == 4 * row["prompts"], row
        assert row["tokens_per_s"] > 0
    serve, blind = rows[("genie-serve HTTP", "2 streams")], rows[("blind-kv", "2 streams")]
    # genie-serve's numbers come from its workers' own counters, read through /v1/genie/workers.
    assert 0 < serve["bytes_per_token"] < 1000
    assert blind["bytes_per_token"] > 1000 * serve["bytes_per_token"]
    assert rows[("engine in-process", "1 stream")]["bytes_per_token"] is None
    roofline = doc["roofline"]
    assert roofline["read_gbps"] > 0 and roofline["copy_gbps"] > 0 and roofline["tflops"] > 0
    assert roofline["weight_bytes_per_step"] == 134_515_008 * (2 if doc["model"]["dtype"] == "bfloat16" else 4)
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["genie-serve worker-link bytes per token vs blind-kv at 2 streams"]["met"] is True
    for name in ("HF generate", "engine in-process", "genie-serve HTTP", "blind-kv", "blind-recompute"):
        assert name in proc.stdout
    png = next(tmp_path.glob("compare-*.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"
