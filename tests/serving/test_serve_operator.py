"""The operator's first hour, through the real CLI: Ctrl-C drains, no worker outlives genie-serve (even
SIGKILLed), and a busy port is one line before anything loads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import smollm2_config, start_server

from genie.serving.process import ServerProcess

TOKENS = 400


def worker_pids(server: ServerProcess) -> list[int]:
    children = psutil.Process(server.pid).children(recursive=True)
    return [p.pid for p in children if "genie.workers.cli" in " ".join(p.cmdline())]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited; only its parent's wait is missing
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if not gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def stream_completion(url: str, on_event) -> tuple[list[str], dict]:
    """Streams a TOKENS-token completion; calls on_event(n) after the n-th event. Returns finish reasons, usage."""
    body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(f"{url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    reasons, usage, events = [], {}, 0
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            on_event(events)
            event = json.loads(line[6:])
            assert "error" not in event, event
            reasons += [c["finish_reason"] for c in event.get("choices", []) if c.get("finish_reason")]
            usage = event.get("usage") or usage
    return reasons, usage


@pytest.mark.slow
def test_ctrl_c_at_the_terminal_drains_the_running_stream(tmp_path: Path) -> None:
    server = start_server(smollm2_config(drain_grace_s=120.0), tmp_path)
    try:
        workers = worker_pids(server)
        assert len(workers) == 2, workers
        # A terminal's Ctrl-C goes to the foreground process group: genie-serve's own here, never pytest's.
        group = os.getpgid(server.pid)
        assert group == server.pid != os.getpgrp()
        assert all(os.getsid(w) != os.getsid(server.pid) for w in workers)

        def ctrl_c(n: int) -> None:
            if n == 5:
                os.killpg(group, signal.SIGINT)

        reasons, usage = stream_completion(server.url, ctrl_c)
        assert reasons == ["length"] and usage["completion_tokens"] == TOKENS, (reasons, usage)
        assert server._popen.wait(timeout=60) == 0, server.log_tail()
        assert wait_gone(workers, timeout=5) == []
        log = server.log_tail()
        assert f"POST /v1/completions 200 model=smollm2 tokens={usage['prompt_tokens']}+{TOKENS}" in log, log
        assert "\r" not in log  # no progress bars in a log that is not a terminal
    finally:
        server.stop()


@pytest.mark.slow
def test_no_worker_outlives_a_sigkilled_genie_serve(tmp_path: Path) -> None:
    server = start_server(smollm2_config(), tmp_path)
    workers = worker_pids(server)
    assert len(workers) == 2, workers
    os.kill(server.pid, signal.SIGKILL)
    assert server._popen.wait(timeout=10) == -signal.SIGKILL
    assert wait_gone(workers, timeout=15) == []


@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_busy_port_is_one_line_before_anything_loads(tmp_path: Path, door: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = smollm2_config(**{"http_port": 0, "grpc_port": 0, f"{door}_port": port})
        path = tmp_path / "genie.yaml"
        path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "genie.serving.cli", "--config", str(path)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "GENIE_HOME": str(tmp_path)})
        took = time.monotonic() - started
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"genie-serve: cannot listen for {'HTTP' if door == 'http' else 'gRPC'} on "
                               f"127.0.0.1:{port}: Address already in use; choose another serving.{door}_port")
    assert took < 5, f"took {took:.1f} s: it loaded something before checking the port"


def test_one_port_for_both_doors_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "genie.yaml"
    path.write_text(yaml.safe_dump(smollm2_config(http_port=8123, grpc_port=8123)))
    proc = subprocess.run([sys.executable, "-m", "genie.serving.cli", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "GENIE_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr == "genie-serve: HTTP and gRPC are both set to port 8123; give them different ports\n"
