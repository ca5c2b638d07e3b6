"""`genie-serve --config configs/vision.yaml` (CLI subprocess, two workers) serving the demo ResNet, driven by
the real `tritonclient.http` and `tritonclient.grpc`: health, metadata with the model's own tensor names, and a
batch of images equal to the factory's module run here, over binary and JSON tensors and over gRPC; concurrent
clients of either door share forwards."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.serving.demo_models import tiny_resnet
from served import get_json

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

MODEL = "resnet-demo"
IMAGES = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(11)).numpy()


@pytest.fixture(scope="module")
def server(serve_config):
    config = shipped_config("vision.yaml")
    # The demo ResNet runs a forward in a few ms, faster than the client sends the next request, so with no
    # queue delay (the default) a free worker rarely finds company; 20 ms lets concurrent requests meet.
    config["model"] |= {"max_queue_delay_ms": 20}
    return serve_config(config)


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=120)


@pytest.fixture(scope="module")
def grpc_client(server):
    assert server.grpc_address, server.ready_line
    client = grpcclient.InferenceServerClient(url=server.grpc_address)
    yield client
    client.close()


def grpc_logits(client, images: np.ndarray) -> np.ndarray:
    given = grpcclient.InferInput("pixel_values", list(images.shape), "FP32")
    given.set_data_from_numpy(images)
    return client.infer(MODEL, [given], outputs=[grpcclient.InferRequestedOutput("logits")]).as_numpy("logits")


def forwards(server) -> tuple[int, int]:
    """(forwards run, largest batch) over every worker's fragments so far."""
    workers = get_json(f"{server.url}/v1/genie/workers")[1]["data"]
    stats = [f for w in workers for f in w["fragments"]]
    return sum(f["batches"] for f in stats), max(f["max_batch"] for f in stats)


def logits(client, images: np.ndarray, binary: bool) -> np.ndarray:
    given = httpclient.InferInput("pixel_values", list(images.shape), "FP32")
    given.set_data_from_numpy(images, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    return client.infer(MODEL, [given], outputs=wanted).as_numpy("logits")


def test_health_and_metadata_use_the_models_own_tensor_names(client) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert {"name": "logits", "datatype": "FP32", "shape": [-1, 10]} in meta["outputs"]


def test_a_batch_equals_the_module_in_process_over_binary_and_json(client) -> None:
    module, _ = tiny_resnet()
    with torch.no_grad():
        want = module(pixel_values=torch.from_numpy(IMAGES)).logits.numpy()
    binary, as_json = logits(client, IMAGES, True), logits(client, IMAGES, False)
    np.testing.assert_allclose(binary, want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(binary, as_json)


def test_concurrent_clients_share_forwards_and_each_gets_its_own_answer(server, client) -> None:
    alone = [logits(client, IMAGES[i:i + 1], True) for i in range(8)]
    before, _ = forwards(server)
    # tritonclient's own way to have requests in flight at once: async_infer on a client with 16 connections.
    many = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=16,
                                            network_timeout=120)
    handles = []
    for i in range(32):
        given = httpclient.InferInput("pixel_values", [1, 3, 64, 64], "FP32")
        given.set_data_from_numpy(IMAGES[i % 8:i % 8 + 1])
        handles.append(many.async_infer(MODEL, [given], outputs=[httpclient.InferRequestedOutput("logits")]))
    together = [h.get_result(timeout=120).as_numpy("logits") for h in handles]
    many.close()
    after, largest = forwards(server)
    assert after - before < 32 and largest > 1, (after - before, largest)
    for i, got in enumerate(together):
        np.testing.assert_allclose(got, alone[i % 8], rtol=0, atol=1e-5)


def test_class_count_over_both_doors_is_the_top_of_the_modules_logits(client, grpc_client) -> None:
    module, _ = tiny_resnet()
    with torch.no_grad():
        top = torch.topk(module(pixel_values=torch.from_numpy(IMAGES[:2])).logits, 3).indices.tolist()
    for door, given in ((httpclient, client), (grpcclient, grpc_client)):
        images = door.InferInput("pixel_values", [2, 3, 64, 64], "FP32")
        images.set_data_from_numpy(IMAGES[:2])
        got = given.infer(MODEL, [images], outputs=[door.InferRequestedOutput("logits", class_count=3)])
        classes = got.as_numpy("logits")
        assert classes.shape == (2, 3)
        assert [[int(c.split(b":")[1]) for c in row] for row in classes] == top, door.__name__


def test_grpc_health_and_metadata(grpc_client) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL)
    meta = grpc_client.get_model_metadata(MODEL, as_json=True)
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]}]
    assert {"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]} in meta["outputs"]


def test_grpc_batch_equals_the_module_and_the_http_answer(client, grpc_client) -> None:
    module, _ = tiny_resnet()
    with torch.no_grad():
        want = module(pixel_values=torch.from_numpy(IMAGES)).logits.numpy()
    got = grpc_logits(grpc_client, IMAGES)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got, logits(client, IMAGES, True))


def test_concurrent_grpc_clients_share_forwards(server, grpc_client) -> None:
    alone = [grpc_logits(grpc_client, IMAGES[i:i + 1]) for i in range(8)]
    before, _ = forwards(server)
    done: list[tuple[int, object, object]] = []
    for i in range(32):  # tritonclient.grpc's own way to have requests in flight at once
        given = grpcclient.InferInput("pixel_values", [1, 3, 64, 64], "FP32")
        given.set_data_from_numpy(IMAGES[i % 8:i % 8 + 1])
        grpc_client.async_infer(MODEL, [given], callback=lambda result, error, i=i: done.append((i, result, error)))
    deadline = time.monotonic() + 120
    while len(done) < 32 and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the callbacks, not standing in for work
    assert len(done) == 32 and all(error is None for _, _, error in done), [e for _, _, e in done if e]
    after, largest = forwards(server)
    assert after - before < 32 and largest > 1, (after - before, largest)
    for i, result, _ in done:
        np.testing.assert_allclose(result.as_numpy("logits"), alone[i % 8], rtol=0, atol=1e-5)
