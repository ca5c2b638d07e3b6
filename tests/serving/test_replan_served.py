"""serving.replan: auto on a real genie-serve (in-process, two real worker processes over gRPC): the demo CLIP
served branch-parallel with its image branch's predicted step time forced 20x too fast. Re-costed on what the
workers measure, replicas win clearly, and genie-serve switches to them while four real `tritonclient` clients
keep sending: no request fails, every answer equals the whole model in-process, requests in flight at the
switch finish, the old fragments are unloaded from the workers, and GET /v1/genie/plans shows the new plan
with applied: true."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import AsyncExitStack

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.config import parse_config
from genie.semantic.planner import recost
from genie.serving.app import start
from genie.serving.demo_models import tiny_clip
from served import get_json

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")

MODEL = "clip-demo"
OUTPUTS = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")
FORCED = 20.0  # the image branch is predicted this many times faster than the cost model says
CLIENTS = 4
AFTER = 8  # requests each client still completes after the old plan is released
DEADLINE_S = 240.0


def examples(k: int = 6) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """k requests of 2 rows each and the whole model's answers, in-process."""
    model, _ = tiny_clip()
    rng = np.random.default_rng(11)
    out = []
    for _ in range(k):
        given = {"input_ids": rng.integers(3, 1000, (2, 8)).astype(np.int64),
                 "attention_mask": np.ones((2, 8), np.int64),
                 "pixel_values": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)}
        with torch.no_grad():
            whole = model(**{n: torch.from_numpy(a) for n, a in given.items()})
        out.append((given, {n: whole[n].numpy() for n in OUTPUTS}))
    return out


class Clients:
    """CLIENTS threads, each sending requests one after another and checking every answer."""

    def __init__(self, url: str, cases) -> None:
        self.url, self.cases = url.removeprefix("http://"), cases
        self.stop = threading.Event()
        self.done: list[tuple[float, float]] = []  # (sent, answered) of every request that succeeded
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _loop(self, seed: int) -> None:
        client = httpclient.InferenceServerClient(url=self.url, network_timeout=60)
        i = seed
        while not self.stop.is_set():
            given, want = self.cases[i % len(self.cases)]
            inputs = []
            for name, array in given.items():
                inputs.append(httpclient.InferInput(name, list(array.shape),
                                                    "INT64" if array.dtype == np.int64 else "FP32"))
                inputs[-1].set_data_from_numpy(array)
            sent = time.time()
            try:
                got = client.infer(MODEL, inputs)
                for name in OUTPUTS:
                    np.testing.assert_allclose(got.as_numpy(name), want[name], rtol=0, atol=1e-5, err_msg=name)
                self.done.append((sent, time.time()))
            except Exception as exc:  # any failure is the test's finding, kept with its message
                self.failed.append(f"{type(exc).__name__}: {exc}")
            i += 1
        client.close()


def drive(http_url: str) -> tuple[Clients, dict]:
    """Clients run until the switch has released the old plan and each sent AFTER more requests."""
    clients = Clients(http_url, examples())
    for t in clients.threads:
        t.start()
    deadline, report, released_at = time.monotonic() + DEADLINE_S, {}, None
    try:
        while time.monotonic() < deadline and not clients.failed:
            (report,) = get_json(f"{http_url}/v1/genie/plans")[1]["data"]
            switches = (report.get("replan") or {}).get("switches") or []
            if switches and switches[0]["old_released"] and released_at is None:
                released_at = time.time()
            if released_at and sum(sent > released_at for sent, _ in clients.done) >= AFTER * CLIENTS:
                break
            time.sleep(0.5)  # polling the report: the clients do the work meanwhile
    finally:
        clients.stop.set()
        for t in clients.threads:
            t.join(timeout=60)
    (report,) = get_json(f"{http_url}/v1/genie/plans")[1]["data"]
    return clients, report


def test_a_forced_misprediction_is_replanned_and_switched_without_a_failed_request(tmp_path, monkeypatch) -> None:
    real = recost.step_time

    def forced(profile, cluster, fragment, batch):
        seconds = real(profile, cluster, fragment, batch)
        return seconds / FORCED if fragment.role == "branch:image" else seconds

    monkeypatch.setattr(recost, "step_time", forced)
    config = shipped_config("multimodal.yaml")
    config["registry"] = {"home": str(tmp_path / "home")}
    config["workers"] |= {"device": "cpu", "launch": 2}
    config["serving"] |= {"grpc_port": None, "replan": "auto", "replan_interval_s": 0.5}
    cfg = parse_config(config)

    async def serve_and_drive():
        async with AsyncExitStack() as stack:
            running = await start(cfg, stack)
            clients, report = await asyncio.to_thread(drive, running.http_url)
            held = {n: set((await c.info(timeout=10)).fragments) for n, c in running.pool.clients.items()}
            moved = running.catalog.named(MODEL).service.metrics.migrations._value.get()
            return clients, report, held, moved

    clients, report, held, moved = asyncio.run(serve_and_drive())
    assert not clients.failed, clients.failed[:3]
    assert moved == 0  # no batch had to run again: those in flight at the switch finished where they began
    replan = report["replan"]
    assert replan["mode"] == "auto" and replan["applied"] is True, replan
    (switch,) = replan["switches"]
    assert (switch["from"], switch["to"], report["strategy"]) == ("branch_parallel", "replicas", "replicas")
    assert switch["old_released"] and switch["mismatch"]  # what it re-costed on, as measured
    at = switch["at_unix_s"]
    assert any(sent < at for sent, _ in clients.done) and sum(sent > at for sent, _ in clients.done) >= AFTER
    spanning = [(s, e) for s, e in clients.done if s < at < e]
    assert spanning or switch["batches_in_flight_at_switch"] == 0  # in flight at the switch: answered all the same
    assert {f["fragment_id"] for f in report["fragments"]} == set(switch["new_fragments"])
    assert all(f["fragment_id"].endswith("@g1") and f["role"] == "all" for f in report["fragments"])
    loaded = set().union(*held.values())
    assert not loaded & set(switch["old_fragments"]), loaded  # the old plan's fragments are gone from the workers
    assert set(switch["new_fragments"]) <= loaded
    assert any(f["measured"].get("calls") for f in report["fragments"])  # the new plan is measured
