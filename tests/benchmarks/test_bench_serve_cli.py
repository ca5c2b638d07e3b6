"""`genie-bench serve` as a real subprocess against stand-in OpenAI-compatible servers on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from bench_helpers import only_result, run_cli, stderr_lines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def serve_args(url: str, out, *extra: str) -> list[str]:
    return ["serve", "--url", url, "--model", "standin-model", "--output", str(out), "--no-progress", *extra]


def test_concurrency_sweep_with_plot(standin, tmp_path):
    server = standin(token_delay_s=0.003)
    proc = run_cli(*serve_args(server.url, tmp_path, "--concurrency", "1,4", "--num-prompts", "12",
                               "--output-len", "16", "--ignore-eos", "--goodput", "ttft:5000,tpot:1000", "--plot"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = only_result(tmp_path)
    assert doc["status"] == "complete" and doc["config"]["levels"] == [1.0, 4.0]
    assert "api_key" not in doc["config"]
    for level in doc["levels"]:
        s = level["summary"]
        assert (s["requests"], s["completed"], s["errors"]) == (12, 12, 0)
        assert s["output_tokens"] == 12 * 16 and s["output_tokens_exact"]
        assert s["ttft"]["p50_ms"] > 0 and s["tpot"]["mean_ms"] >= 3.0
        assert s["goodput"] == pytest.approx(s["request_throughput"])
        assert len(level["requests"]) == 12
        assert all(r["output_tokens"] == 16 and len(r["itl_s"]) == 15 for r in level["requests"])
    assert len(server.bodies) == 24 and all(b["ignore_eos"] and b["max_tokens"] == 16 for b in server.bodies)
    assert "concurrency 4" in proc.stdout and "TTFT p99 ms" in proc.stdout
    png = next(tmp_path.glob("serve-*.png"))
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


def test_request_rate_on_the_completions_endpoint(standin, tmp_path):
    server = standin()
    proc = run_cli(*serve_args(server.url, tmp_path, "--request-rate", "50", "--num-prompts", "10",
                               "--endpoint", "completions", "--input-len", "64", "--max-concurrency", "4"))
    assert proc.returncode == 0, proc.stderr
    [level] = only_result(tmp_path)["levels"]
    assert level["mode"] == "rate" and level["summary"]["completed"] == 10
    assert all(len(b["prompt"].split()) == 64 for b in server.bodies)
    starts = sorted(r["start_s"] for r in level["requests"])
    assert starts[-1] > 0.02  # Poisson arrivals at 50/s spread ten requests out in time


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "1", "--request-rate", "2"], "not allowed with argument"),
        (["--goodput", "ttft=5"], "--goodput"),
        (["--num-prompts", "0"], "--num-prompts must be a positive integer"),
        (["--num-prompts", "many"], "invalid int value"),
        (["--input-len", "10", "--prompts", "x.jsonl"], "exclude each other"),
        (["--max-concurrency", "2"], "only applies with --request-rate"),
        (["--endpoint", "embeddings"], "invalid choice"),
        (["--timeout", "0"], "--timeout"),
        (["--prompts", "/no/such/file.jsonl"], "cannot read /no/such/file.jsonl"),
        (["--bogus"], "unrecognized arguments"),
        (["--dataset", "chat"], "invalid choice"),
        (["--dataset", "prefix", "--input-len", "10"], "--dataset prefix builds its own prompts; drop --input-len"),
        (["--dataset", "multiturn", "--prompts", "x.jsonl"], "drop --prompts"),
        (["--turns", "3"], "--turns only applies with --dataset multiturn"),
        (["--dataset", "prefix", "--turns", "3"], "--turns only applies with --dataset multiturn"),
        (["--prefix-len", "100"], "--prefix-len only applies with --dataset prefix or multiturn"),
        (["--dataset", "multiturn", "--turns", "0"], "--turns must be a positive integer"),
        (["--dataset", "prefix", "--prefix-len", "-5"], "--prefix-len must be a positive integer"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, flags, complaint):
    proc = run_cli(*serve_args("http://127.0.0.1:9", tmp_path, *flags))
    assert proc.returncode == 2
    [line] = stderr_lines(proc)
    assert line.startswith("genie-bench") and " error: " in line and complaint in line
    assert not list(tmp_path.glob("*.json"))


def test_missing_url_and_bad_url_exit_2():
    for args in (["serve", "--model", "m"], ["serve", "--url", "localhost:8000", "--model", "m"], []):
        proc = run_cli(*args)
        assert proc.returncode == 2
        assert len(stderr_lines(proc)) == 1 and "error:" in proc.stderr


def test_unreachable_url_fails_fast_and_clearly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = run_cli(*serve_args(f"http://127.0.0.1:{port}", tmp_path))
    assert time.monotonic() - started < 10
    assert proc.returncode == 1
    [line] = stderr_lines(proc)
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in line


def test_silent_server_fails_within_10_seconds(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        proc = run_cli(*serve_args(f"http://127.0.0.1:{silent.getsockname()[1]}", tmp_path), timeout=30)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1 and elapsed < 10
    assert "did not answer GET /v1/models within 5 s" in proc.stderr and "Traceback" not in proc.stderr


def test_server_that_always_fails_saves_errors_and_exits_1(standin, tmp_path):
    server = standin(fail_every=1)
    proc = run_cli(*serve_args(server.url, tmp_path, "--concurrency", "2", "--num-prompts", "6", "--plot"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "every request failed" in proc.stderr and "nothing to plot" in proc.stderr
    doc = only_result(tmp_path)
    assert doc["status"] == "failed"
    s = doc["levels"][0]["summary"]
    assert (s["completed"], s["errors"]) == (0, 6)
    assert s["error_messages"][0]["message"].startswith("HTTP 500: stand-in failure on request")
    assert "HTTP 500: stand-in failure" in proc.stdout


def test_server_that_fails_half_finishes_with_errors_counted(standin, tmp_path):
    server = standin(fail_every=2)
    proc = run_cli(*serve_args(server.url, tmp_path, "--concurrency", "1", "--num-prompts", "10"))
    assert proc.returncode == 0, proc.stderr
    s = only_result(tmp_path)["levels"][0]["summary"]
    assert (s["requests"], s["completed"], s["errors"]) == (10, 5, 5)
    assert s["error_messages"][0]["count"] == 1  # each failure names its own request number


def test_ctrl_c_saves_partial_results(standin, tmp_path):
    server = standin(token_delay_s=0.05)  # 64 tokens: about 3 s per request
    cmd = [sys.executable, "-m", "genie.benchmarks.cli",
           *serve_args(server.url, tmp_path, "--concurrency", "2,8", "--num-prompts", "20", "--output-len", "64",
                       "--ignore-eos")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(server.bodies) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the run to be under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "results so far are being saved" in stderr
    doc = only_result(tmp_path)
    assert doc["status"] == "interrupted"
    [level] = doc["levels"]  # the second level never started
    assert level["interrupted"] and level["cancelled"] == 2
    assert level["summary"]["completed"] >= 2
    assert json.dumps(doc)  # a whole, valid document
    assert "(stopped)" in stdout
