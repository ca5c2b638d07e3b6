"""The KServe v2 routes of the real app in-process, over a stub stateless service (no worker): binary and JSON
responses, errors in the protocol's `{"error": ...}` shape, which paths need a key, and the body limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import numpy as np
import torch
from aiohttp.test_utils import TestClient, TestServer

from genie.auth import KeySet
from genie.serving.catalog import Catalog, LLMEntry, StatelessEntry
from genie.serving.http import HttpState, make_app
from genie.workers.contract import TensorSpec


class DoublingService:
    """Every row's `x` doubled, as `y`; records the rows it was given."""

    def __init__(self) -> None:
        self.policy = SimpleNamespace(max_batch_size=4)
        self.ready = True
        self.rows: list[dict[str, torch.Tensor]] = []

    async def run_tensors(self, rows):
        self.rows += rows
        return [{"y": row["x"][0] * 2} for row in rows]


def catalog(service: DoublingService) -> Catalog:
    entry = StatelessEntry(name="dbl", created=0, service=service, inputs=(TensorSpec("x", "float32", (-1, 3)),),
                           outputs=(TensorSpec("y", "float32", (-1, 3)),))
    llm = LLMEntry(model=SimpleNamespace(name="llm"), router=SimpleNamespace(ready=True), tokenizer=None)
    return Catalog([entry, llm])


@asynccontextmanager
async def door(service: DoublingService, **fields) -> AsyncIterator[TestClient]:
    server = TestServer(make_app(HttpState(catalog=catalog(service), **fields)), host="127.0.0.1")
    client = TestClient(server)
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


X = np.arange(6, dtype=np.float32).reshape(2, 3)


async def test_json_in_json_out_one_job_per_row() -> None:
    service = DoublingService()
    async with door(service) as client:
        resp = await client.post("/v2/models/dbl/infer", json={
            "id": "a1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": X.tolist()}]})
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"model_name": "dbl", "model_version": "1", "id": "a1", "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": (X * 2).reshape(-1).tolist()}]}
    assert [list(r["x"].shape) for r in service.rows] == [[1, 3], [1, 3]]


async def test_binary_in_binary_out() -> None:
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                   "parameters": {"binary_data_size": X.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    async with door(DoublingService()) as client:
        resp = await client.post("/v2/models/dbl/versions/1/infer", data=head + X.tobytes(),
                                 headers={"Inference-Header-Content-Length": str(len(head)),
                                          "Content-Type": "application/octet-stream"})
        raw = await resp.read()
        assert resp.status == 200 and resp.content_type == "application/octet-stream"
    n = int(resp.headers["Inference-Header-Content-Length"])
    (out,) = json.loads(raw[:n])["outputs"]
    assert out["parameters"] == {"binary_data_size": X.nbytes} and "data" not in out
    np.testing.assert_array_equal(np.frombuffer(raw[n:], "<f4").reshape(2, 3), X * 2)


async def test_server_and_model_metadata_and_readiness() -> None:
    service = DoublingService()
    async with door(service) as client:
        server = await (await client.get("/v2")).json()
        assert server["name"] == "genie-serve" and server["extensions"] == ["binary_tensor_data"]
        meta = await (await client.get("/v2/models/dbl")).json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}] and meta["versions"] == ["1"]
        assert (await client.get("/v2/health/live")).status == 200
        assert (await client.get("/v2/health/ready")).status == 200
        assert (await client.get("/v2/models/dbl/ready")).status == 200
        service.ready = False
        assert (await client.get("/v2/health/ready")).status == 503
        assert (await client.get("/v2/models/dbl/versions/1/ready")).status == 503


async def test_errors_come_in_the_protocols_shape_with_their_status() -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    async with door(DoublingService()) as client:
        for path, status, says in [
            ("/v2/models/nope/infer", 404, "model 'nope' is not served here"),
            ("/v2/models/dbl/versions/7/infer", 404, "no version '7'"),
            ("/v2/models/llm/infer", 400, "/v1/chat/completions"),
        ]:
            resp = await client.post(path, json=body)
            error = (await resp.json())["error"]
            assert resp.status == status and isinstance(error, str) and says in error, (path, error)
        resp = await client.post("/v2/models/dbl/infer", json=body | {"inputs": [body["inputs"][0] | {"shape": [5, 3],
                                                                                   "data": [0] * 15}]})
        assert resp.status == 400 and "batch of 5" in (await resp.json())["error"]


async def test_a_body_over_the_limit_is_413() -> None:
    async with door(DoublingService(), max_body_bytes=1024) as client:
        resp = await client.post("/v2/models/dbl/infer", data=b" " * 4096)
        assert resp.status == 413 and "max_body_mib" in (await resp.json())["error"]


async def test_health_is_open_and_models_need_a_key() -> None:
    async with door(DoublingService(), api_keys=KeySet(["sk-k"])) as client:
        assert (await client.get("/v2/health/live")).status == 200
        assert (await client.get("/v2/health/ready")).status == 200
        assert (await client.get("/v2/models/dbl")).status == 401
        assert (await client.get("/v2")).status == 401
        resp = await client.get("/v2/models/dbl", headers={"Authorization": "Bearer sk-k"})
        assert resp.status == 200
    async with door(DoublingService(), api_keys=KeySet(["sk-k"]), protect_metrics=True) as client:
        assert (await client.get("/v2/health/live")).status == 401


async def test_an_llm_answers_metadata_and_ready_like_every_model_but_takes_no_tensors() -> None:
    async with door(DoublingService()) as client:
        resp = await client.get("/v2/models/llm")
        assert resp.status == 200
        assert await resp.json() == {"name": "llm", "versions": ["1"], "platform": "pytorch", "inputs": [],
                                     "outputs": []}
        resp = await client.get("/v2/models/llm/ready")
        assert resp.status == 200 and (await resp.json())["ready"] is True


async def test_classification_gives_each_rows_top_classes_as_triton_writes_them() -> None:
    x = np.array([[0.5, 3.0, 1.0], [2.0, -1.0, 4.0]], dtype=np.float32)
    async with door(DoublingService()) as client:
        resp = await client.post("/v2/models/dbl/infer", json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}],
            "outputs": [{"name": "y", "parameters": {"classification": 2}}]})
        assert resp.status == 200, await resp.text()
        (out,) = (await resp.json())["outputs"]
        assert out == {"name": "y", "datatype": "BYTES", "shape": [2, 2],
                       "data": ["6.000000:1", "2.000000:2", "8.000000:2", "4.000000:0"]}
        resp = await client.post("/v2/models/dbl/infer", json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}],
            "outputs": [{"name": "y", "parameters": {"classification": 4}}]})
        assert resp.status == 400 and "asks for 4 classes; output 'y' has 3" in (await resp.json())["error"]
