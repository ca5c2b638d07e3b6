"""The KServe v2 HTTP door through the real path: genie-serve started in this process with a `py:` CNN (registry,
a real worker process, the dynamic batcher), called by the real `tritonclient.http` client. Binary and JSON
tensors both give the module's own outputs; bad inputs come back as 400s that name the field.

tritonclient is synchronous, so its calls run in a thread while the server's loop keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from genie.config import parse_config
from genie.serving.app import start

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

FACTORIES = Path(__file__).resolve().parents[1] / "workers"
IMAGES = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def factory_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FACTORIES))  # the registry imports the factory here ...
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FACTORIES), os.environ.get("PYTHONPATH", "")]))  # ... the worker there


def infer(client, images: np.ndarray, binary: bool, name: str = "images", datatype: str = "FP32"):
    given = tritonclient_http.InferInput(name, list(images.shape), datatype)
    given.set_data_from_numpy(images, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in ("output_0", "output_1")]
    result = client.infer("cnn", [given], outputs=outputs, request_id="req-1")
    return result.as_numpy("output_0"), result.as_numpy("output_1"), result.get_response()


def refusal(client, images: np.ndarray, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        infer(client, images, True, **kwargs)
    return info.value


def post(url: str, raw: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=raw, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def triton_session(http_url: str) -> dict:
    """Everything the client does, in one thread; returns what the test checks."""
    client = tritonclient_http.InferenceServerClient(url=http_url.removeprefix("http://"), network_timeout=60)
    images = IMAGES.numpy()
    seen: dict = {"live": client.is_server_live(), "ready": client.is_server_ready(),
                  "model_ready": client.is_model_ready("cnn"), "server": client.get_server_metadata(),
                  "metadata": client.get_model_metadata("cnn"), "binary": infer(client, images, True),
                  "json": infer(client, images, False)}
    plain = client.infer("cnn", [_input(images)])  # no outputs named: every output, as JSON
    seen["plain"] = {o["name"]: plain.as_numpy(o["name"]) for o in plain.get_response()["outputs"]}
    seen["wrong_name"] = refusal(client, images, name="pixels")
    seen["wrong_dtype"] = refusal(client, images.astype(np.float64), datatype="FP64")
    seen["wrong_shape"] = refusal(client, images[:, :, :8])
    seen["too_big_batch"] = refusal(client, np.zeros((9, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model")
    seen["unknown"] = info.value
    seen["too_large"] = post(f"{http_url}/v2/models/cnn/infer", b" " * (1 << 20))
    client.close()
    return seen


def _input(images: np.ndarray):
    given = tritonclient_http.InferInput("images", list(images.shape), "FP32")
    given.set_data_from_numpy(images, binary_data=False)
    return given


def test_tritonclient_is_served_by_the_v2_door(tmp_path, factory_path) -> None:
    from stateless_models import small_cnn

    module, _ = small_cnn()
    with torch.no_grad():
        want_logits, want_features = (t.numpy() for t in module(IMAGES))
    cfg = parse_config({
        "model": {"name": "cnn", "source": "py:stateless_models:small_cnn", "register_if_missing": True,
                  "dtype": "float32", "max_queue_delay_ms": 5, "max_batch_size": 8},
        "registry": {"home": str(tmp_path / "home")},
        "workers": {"launch": 1, "threads": 1},
        "serving": {"http_port": 0, "grpc_port": None, "max_body_mib": 0.5},
    })

    async def serve_and_call() -> dict:
        async with AsyncExitStack() as stack:
            running = await start(cfg, stack)
            return await asyncio.to_thread(triton_session, running.http_url)

    seen = asyncio.run(serve_and_call())
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert seen["server"]["name"] == "genie-serve" and "binary_tensor_data" in seen["server"]["extensions"]
    meta = seen["metadata"]
    assert meta["name"] == "cnn" and meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]},
                               {"name": "output_1", "datatype": "FP32", "shape": [-1, 8, 4, 4]}]
    for how in ("binary", "json"):
        logits, features, response = seen[how]
        assert logits.dtype == np.float32 and response["id"] == "req-1" and response["model_name"] == "cnn"
        np.testing.assert_allclose(logits, want_logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(features, want_features, rtol=0, atol=1e-5)
    binary_outputs = seen["binary"][2]["outputs"]
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in binary_outputs)
    assert all("data" in o for o in seen["json"][2]["outputs"])
    np.testing.assert_allclose(seen["plain"]["output_0"], want_logits, rtol=0, atol=1e-5)
    for case, field in [("wrong_name", "input 'pixels'"), ("wrong_dtype", "input 'images' has datatype FP64"),
                        ("wrong_shape", "input 'images' has shape [4, 3, 8, 16]"),
                        ("too_big_batch", "input 'images' has a batch of 9")]:
        exc = seen[case]
        assert exc.status() == "400" and field in exc.message(), (case, exc)
    assert seen["unknown"].status() == "404" and "no-such-model" in seen["unknown"].message()
    status, error = seen["too_large"]
    assert status == 413 and "max_body_mib" in error["error"]


SENTENCES = ["The cat sat on the mat.", "A feline rested on the rug, far from the noisy street outside.", "Hi!"]


def text_session(http_url: str, ids: list[list[int]]) -> dict:
    client = tritonclient_http.InferenceServerClient(url=http_url.removeprefix("http://"), network_timeout=60)
    text = tritonclient_http.InferInput("text", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=np.object_))  # binary, length-prefixed
    seen = {"metadata": client.get_model_metadata("minilm"),
            "text": client.infer("minilm", [text]).as_numpy("embedding")}
    longest = max(map(len, ids))
    padded = np.array([row + [0] * (longest - len(row)) for row in ids], dtype=np.int64)
    mask = (np.arange(longest)[None, :] < np.array([len(r) for r in ids])[:, None]).astype(np.int64)
    given = []
    for name, array in (("input_ids", padded), ("attention_mask", mask)):
        given.append(tritonclient_http.InferInput(name, list(array.shape), "INT64"))
        given[-1].set_data_from_numpy(array, binary_data=False)
    seen["ids"] = client.infer("minilm", given, outputs=[
        tritonclient_http.InferRequestedOutput("embedding", binary_data=False)]).as_numpy("embedding")
    client.close()
    body = json.dumps({"model": "minilm", "input": SENTENCES}).encode()
    seen["openai"] = np.array([d["embedding"] for d in post(f"{http_url}/v1/embeddings", body)[1]["data"]])
    return seen


def test_a_text_model_takes_strings_or_padded_ids_and_equals_v1_embeddings(tmp_path) -> None:
    config = yaml.safe_load((REPO / "configs" / "embeddings.yaml").read_text())
    config["serving"] |= {"http_port": 0, "grpc_port": None}
    config["workers"] |= {"launch": 1, "threads": 1}
    config["registry"] = {"home": str(tmp_path / "home")}
    cfg = parse_config(config)

    async def serve_and_call() -> dict:
        async with AsyncExitStack() as stack:
            running = await start(cfg, stack)
            ids = running.catalog.named("minilm").tokenizer.encode_many(SENTENCES)
            return await asyncio.to_thread(text_session, running.http_url, ids)

    seen = asyncio.run(serve_and_call())
    names = [(i["name"], i["datatype"]) for i in seen["metadata"]["inputs"]]
    assert names == [("text", "BYTES"), ("input_ids", "INT64"), ("attention_mask", "INT64")]
    assert seen["metadata"]["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert seen["text"].shape == (3, 384) and seen["text"].dtype == np.float32
    np.testing.assert_allclose(seen["text"], seen["openai"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(seen["ids"], seen["openai"], rtol=0, atol=1e-5)
