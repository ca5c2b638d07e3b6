"""Two real genie-serve processes on one real PostgreSQL registry and one artifact folder.

Started at once, they analyse and plan their model once between them (the registry's analyses table says
so). A model their config names that nobody has registered yet is reported waiting, with the reason, while
the other model serves; registered through `genie-models register` against the shared registry, it is served
by both without a restart (`registry.poll_interval_s`)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import yaml

from genie.registry.store import Registry
from genie.serving.process import ServerProcess, spawn_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REGISTERED_SERVED_WITHIN_S = 60.0  # from `genie-models register` returning to both servers answering
_names = itertools.count()


def _database(server) -> str:
    name = f"genie_two_servers_{next(_names)}"
    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return server.url(name)


def _start(config: dict, folder: Path) -> ServerProcess:
    folder.mkdir()
    (folder / "genie.yaml").write_text(yaml.safe_dump(config))
    return spawn_server(folder / "genie.yaml", timeout=300)


def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _complete(server: ServerProcess, model: str) -> tuple[int, dict]:
    return _call(f"{server.url}/v1/completions",
                 {"model": model, "prompt": "w1 w2 w3", "max_tokens": 4, "temperature": 0})


def _health(server: ServerProcess) -> tuple[int, dict[str, dict]]:
    status, report = _call(f"{server.url}/health")
    return status, {m["name"]: m for m in report["models"]}


def test_two_servers_share_one_registry_analyse_once_and_serve_a_model_registered_later(
    pg_server, tmp_path: Path, llama_dir: Path, llama_dir_b: Path
) -> None:
    url, home = _database(pg_server), tmp_path / "shared-artifacts"
    config = {
        "models": [{"name": "alpha", "source": str(llama_dir), "register_if_missing": True}, {"name": "beta"}],
        "registry": {"url": url, "home": str(home), "poll_interval_s": 0.5},
        "workers": {"launch": 1, "device": "cpu", "threads": 1, "kv_cache_mib": 8},
        "serving": {"http_port": 0, "grpc_port": None, "access_log": False},
    }
    servers: list[ServerProcess] = []
    try:
        with ThreadPoolExecutor(2) as pool:  # both start at once, racing to register and analyse alpha
            futures = [pool.submit(_start, config, tmp_path / f"server-{i}") for i in range(2)]
            servers += [f.result() for f in futures]
        pids = [s.pid for s in servers]
        with Registry.open(url, home) as reg:
            alpha = reg.resolve("alpha")
            assert reg.analysis_counts(alpha) == {"profile": 1, "plan": 1}, "analysed and planned once, by one"

        for server in servers:
            status, models = _health(server)
            assert status == 503 and models["alpha"]["state"] == "ready"
            assert models["beta"]["state"] == "waiting" and "no model named 'beta'" in models["beta"]["reason"]
            assert _complete(server, "alpha")[0] == 200
            status, body = _complete(server, "beta")
            assert status == 503, body
            assert "'beta' is not ready here yet" in body["error"]["message"]
            assert "registry.poll_interval_s" in body["error"]["message"]

        registered = subprocess.run(
            [sys.executable, "-m", "genie.registry.cli", "register", "beta", str(llama_dir_b)],
            env={**os.environ, "GENIE_REGISTRY_URL": url, "GENIE_HOME": str(home)},
            capture_output=True, text=True, timeout=300,
        )
        assert registered.returncode == 0, registered.stderr
        deadline = time.monotonic() + REGISTERED_SERVED_WITHIN_S
        pending = list(servers)
        while pending and time.monotonic() < deadline:
            pending = [s for s in pending if _health(s)[1]["beta"]["state"] != "ready"]
            time.sleep(0.2)
        assert not pending, [s.log_tail() for s in pending]
        assert [s.pid for s in servers] == pids
        for server in servers:
            assert server.alive(), "served without a restart"
            assert "beta:1 (llm), registered after this genie-serve started, is now served" in server.log_tail()
            assert _health(server)[0] == 200
            status, body = _complete(server, "beta")
            assert status == 200 and body["usage"]["completion_tokens"] == 4, body
        with Registry.open(url, home) as reg:
            beta = reg.resolve("beta")
            assert reg.analysis_counts(beta) == {"profile": 1, "plan": 1}, "the CLI analysed it, one server planned"
    finally:
        for server in servers:
            assert server.stop(grace=30) == 0, server.log_tail()
