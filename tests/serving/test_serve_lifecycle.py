"""genie-serve's start and stop: damaged weights are refused at start; the drain keeps its grace period."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from genie.config import ModelConfig
from genie.registry.store import Registry

pytestmark = pytest.mark.slow

GRACE_S = 3.0


def test_a_flipped_byte_in_a_stored_artifact_refuses_the_model_at_start(tmp_path, serving_home, smollm2_yaml):
    with Registry.open(home=serving_home) as registry:  # registers SmolLM2 the first time, as genie-serve would
        version = registry.ensure(ModelConfig.model_validate(smollm2_yaml["model"]), progress=False)
    home = tmp_path / "home"
    shutil.copytree(serving_home, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    weights = max(version.artifacts, key=lambda a: a.bytes)
    damaged = home / "models" / version.content_hash / weights.path
    with open(damaged, "r+b") as f:
        f.seek(weights.bytes // 2)
        byte = f.read(1)
        f.seek(weights.bytes // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    config = tmp_path / "genie.yaml"
    config.write_text(yaml.safe_dump(smollm2_yaml))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "genie.serving.cli", "--config", str(config)],
        env={**os.environ, "GENIE_HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "genie-serve ready" not in proc.stdout
    last = proc.stderr.strip().splitlines()
    message = "\n".join(line for line in last if not line[:4].isdigit())  # the one error, not the log lines
    assert f"refusing to serve {version.ref}" in message, proc.stderr[-2000:]
    assert f"{weights.path}:" in message and "DAMAGED" in message
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_drain_aborts_a_stream_longer_than_the_grace_period(serve_smollm2) -> None:
    server = serve_smollm2(drain_grace_s=GRACE_S)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 1500, "temperature": 0, "ignore_eos": True, "stream": True}
    req = urllib.request.Request(f"{server.url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    events, reasons, errors = [], [], []
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            events.append(line)
            if len(events) == 5:
                server._popen.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
            if line == "data: [DONE]":
                break
            event = json.loads(line[6:])
            if "error" in event:
                errors.append(event["error"]["message"])
            reasons += [c.get("finish_reason") for c in event.get("choices", []) if c.get("finish_reason")]
    ended = time.monotonic() - signalled
    assert reasons == ["abort"], reasons
    assert errors and "grace period" in errors[0], errors
    assert GRACE_S - 0.5 <= ended <= GRACE_S + 3, f"the stream ended {ended:.1f} s after SIGTERM"
    assert server._popen.wait(timeout=GRACE_S + 5) == 0
    assert time.monotonic() - signalled <= GRACE_S + 5


def test_listening_beyond_loopback_without_a_key_is_refused_at_start(tmp_path, smollm2_yaml) -> None:
    config = tmp_path / "genie.yaml"
    config.write_text(yaml.safe_dump(smollm2_yaml | {"serving": {**smollm2_yaml["serving"], "host": "0.0.0.0"}}))
    env = {k: v for k, v in os.environ.items() if k != "GENIE_API_KEYS"}
    proc = subprocess.run([sys.executable, "-m", "genie.serving.cli", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "serving.host is '0.0.0.0' but no API key is set" in lines[0], proc.stderr
    assert "GENIE_API_KEYS" in lines[0]
