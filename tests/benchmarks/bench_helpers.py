"""Helpers for genie-bench tests: run the real CLI as a subprocess and read what it saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`genie-bench` as a real subprocess, the way a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "genie.benchmarks.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def only_result(out_dir: Path) -> dict:
    files = sorted(out_dir.glob("serve-*.json"))
    assert len(files) == 1, f"expected one results file in {out_dir}, found {files}"
    return json.loads(files[0].read_text())


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]
