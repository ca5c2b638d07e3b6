"""A served model the registry lacks at start (registry.poll_interval_s set): left out of the start instead of
stopping it, reported `waiting` with its reason in /health, answered with a 503 that says why; without the
option the start still refuses it. The path through two real servers is tests/registry/test_reg_two_servers.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from genie.config import parse_config
from genie.errors import ConfigError, NotFound, Unavailable
from genie.serving.catalog import Catalog, LLMEntry
from genie.serving.health import health_report
from genie.serving.http import HttpState, make_app
from genie.serving.prepare import prepare_available, prepare_models
from genie.serving.registry_watch import waiting_reason, workers_to_start


def _config(tmp_path: Path, poll: float | None, **workers) -> object:
    return parse_config({
        "models": [{"name": "beta"}],
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}", "home": str(tmp_path / "home"),
                     "poll_interval_s": poll},
        "workers": {"launch": 2, "device": "cpu", "memory_mib": 512, **workers},
    })


def _ready_entry(name: str) -> LLMEntry:
    router = SimpleNamespace(ready=True, accepting=True, replicas={})
    return LLMEntry(model=SimpleNamespace(name=name), router=router, tokenizer=None)


async def test_a_missing_model_waits_with_its_reason_only_when_polling_is_on(tmp_path: Path) -> None:
    prepared, waiting = await prepare_available(_config(tmp_path, 0.5))
    assert prepared == [] and list(waiting) == ["beta"]
    assert "no model named 'beta' in the registry" in waiting["beta"]
    with pytest.raises(NotFound, match="no model named 'beta'"):
        await prepare_models(_config(tmp_path, None))


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="poll_interval_s"):
        _config(tmp_path, 0)


def test_while_a_model_waits_every_configured_worker_starts(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 0.5)
    assert workers_to_start(cfg, [], {"beta": "not registered"}) == {"worker-0", "worker-1"}
    assert workers_to_start(cfg, [], {}) == set()


def test_health_says_degraded_and_names_the_waiting_model_with_its_reason(tmp_path: Path) -> None:
    reason = waiting_reason(_config(tmp_path, 0.5), "no model named 'beta' in the registry")
    report = health_report(Catalog([_ready_entry("alpha")], {"beta": reason}))
    assert report["status"] == "degraded"
    beta = {m["name"]: m for m in report["models"]}["beta"]
    assert beta["state"] == "waiting" and "every 0.5 s (registry.poll_interval_s)" in beta["reason"]
    assert health_report(Catalog([_ready_entry("alpha")]))["status"] == "ready"


async def test_a_request_for_a_waiting_model_gets_503_saying_why_and_an_unknown_one_404() -> None:
    catalog = Catalog([_ready_entry("alpha")], {"beta": "no model named 'beta' in the registry; looking"})
    with pytest.raises(Unavailable, match="'beta' is not ready here yet: no model named 'beta'"):
        catalog.named("beta")
    async with TestClient(TestServer(make_app(HttpState(catalog=catalog)), host="127.0.0.1")) as client:
        resp = await client.post("/v1/completions", json={"model": "beta", "prompt": "hi"})
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "model_not_ready", body
        resp = await client.post("/v1/completions", json={"model": "gamma", "prompt": "hi"})
        assert resp.status == 404
        resp = await client.get("/health")
        assert resp.status == 503 and (await resp.json())["status"] == "degraded"
