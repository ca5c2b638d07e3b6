"""genie-serve (CLI subprocess, two workers of 5 MiB planning budget each) serving a ResNet that fits neither
worker as a two-stage pipeline, beside a small ResNet that fits and is replicated, through the real
`tritonclient`: logits equal the one-worker model; each batch crosses as micro-batches and only the stage
boundary activations cross (the plan's predicted bytes, measured). Then a worker is SIGKILLed under load: every
request of the pipeline ends (answered right, or a clear 503 naming the failed replica), none hangs, the other
model loses nothing, and the pipeline serves again once the supervisor has brought the worker back."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.serving.demo_models import small_resnet, tiny_resnet
from served import child_pids, get_json

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

PIPELINED, WHOLE = "small-resnet", "resnet-demo"
IMAGES = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(5)).numpy()
BOUNDARY = 128 * 4 * 4 * 4  # bytes per image between the stages: act_0 [128, 4, 4] fp32


@pytest.fixture(scope="module")
def server(serve_config):
    config = shipped_config("vision-pipeline.yaml")
    assert config["workers"]["memory_mib"] < 60  # the shipped config pipelines resnet18 this way
    del config["model"]
    config["models"] = [
        {"name": PIPELINED, "source": "py:genie.serving.demo_models:small_resnet", "register_if_missing": True,
         "dtype": "float32", "max_batch_size": 16},
        {"name": WHOLE, "source": "py:genie.serving.demo_models:tiny_resnet", "register_if_missing": True,
         "dtype": "float32", "max_batch_size": 16},
    ]
    config["workers"] |= {"memory_mib": 5, "restart_backoff_s": 0.5}
    return serve_config(config)


def want(factory, images: np.ndarray) -> np.ndarray:
    module, _ = factory()
    with torch.no_grad():
        return module(pixel_values=torch.from_numpy(images)).logits.numpy()


def infer(client, module, model: str, images: np.ndarray) -> np.ndarray:
    given = module.InferInput("pixel_values", list(images.shape), "FP32")
    given.set_data_from_numpy(images)
    return client.infer(model, [given]).as_numpy("logits")


def http(server):
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)


def states(server) -> dict[tuple[str, str], str]:
    _, body = get_json(f"{server.url}/health")
    return {(m["name"], r["name"]): r["state"] for m in body["models"] for r in m["replicas"]}


def test_the_pipeline_equals_the_whole_model_and_only_the_boundary_crosses(server) -> None:
    client, grpc = http(server), grpcclient.InferenceServerClient(url=server.grpc_address)
    expected = want(small_resnet, IMAGES)
    np.testing.assert_allclose(infer(client, httpclient, PIPELINED, IMAGES), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(infer(grpc, grpcclient, PIPELINED, IMAGES[:5]), expected[:5], rtol=0, atol=1e-4)
    for i in range(3):  # one image a request
        np.testing.assert_allclose(infer(client, httpclient, PIPELINED, IMAGES[i:i + 1]), expected[i:i + 1],
                                   rtol=0, atol=1e-4)
    meta = client.get_model_metadata(PIPELINED)
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    _, body = get_json(f"{server.url}/v1/genie/plans")
    report = next(r for r in body["data"] if r["model"] == PIPELINED)
    assert report["strategy"] == "pipeline"
    first, second = report["fragments"]
    assert first["worker"] != second["worker"]
    assert first["measured"]["rows"] == second["measured"]["rows"] == 16 + 5 + 3
    (link,) = report["links"]
    assert link["predicted_bytes_per_request"] == link["measured_payload_bytes_per_request"] == BOUNDARY
    framed = link["measured_worker_bytes_per_request"]  # the first stage worker's own bytes_sent counter
    assert abs(framed - BOUNDARY) / BOUNDARY < 0.05, link
    _, workers = get_json(f"{server.url}/v1/genie/workers")
    stages = {f["fragment_id"]: f for w in workers["data"] for f in w["fragments"]
              if f["fragment_id"] in (first["fragment_id"], second["fragment_id"])}
    assert max(f["max_batch"] for f in stages.values()) == 8  # 16 images went through as 2 micro-batches of 8


def test_a_killed_stage_worker_fails_or_finishes_each_request_and_the_pipeline_comes_back(server) -> None:
    pipelined, whole = want(small_resnet, IMAGES), want(tiny_resnet, IMAGES)
    workers = child_pids(server.pid)
    assert len(workers) == 2

    def one(i: int) -> tuple[str, int, object]:
        model = PIPELINED if i % 2 else WHOLE
        try:
            return model, i, infer(http(server), httpclient, model, IMAGES[i % 16:i % 16 + 1])
        except InferenceServerException as exc:
            return model, i, exc

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(48)]
        time.sleep(0.5)  # let requests reach the workers before one dies
        os.kill(workers[0], signal.SIGKILL)
        results = [f.result(timeout=120) for f in futures]  # nothing hangs
    failed = [(m, i, r) for m, i, r in results if isinstance(r, Exception)]
    for model, i, got in results:
        if not isinstance(got, Exception):
            np.testing.assert_allclose(got, (pipelined if model == PIPELINED else whole)[i % 16:i % 16 + 1],
                                       rtol=0, atol=1e-4)
    assert all(m == PIPELINED for m, _, _ in failed), failed  # the replicated model lost nothing
    for _, _, exc in failed:
        assert exc.status() in ("503", "StatusCode.UNAVAILABLE") and PIPELINED in exc.message(), exc
    deadline = time.monotonic() + 120
    while not (workers[0] not in child_pids(server.pid) and set(states(server).values()) == {"ready"}):
        assert time.monotonic() < deadline, f"not every replica came back: {states(server)}"
        time.sleep(0.25)  # waiting for the supervisor, not standing in for work
    np.testing.assert_allclose(infer(http(server), httpclient, PIPELINED, IMAGES), pipelined, rtol=0, atol=1e-4)
