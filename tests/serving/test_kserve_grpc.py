"""The KServe v2 gRPC door in-process, on a real grpc.aio server on 127.0.0.1 over a stub stateless service (no
worker), driven by the real `tritonclient.grpc.aio` client and by hand-built protocol messages: health and
metadata, raw and typed tensors, and every refusal an INVALID_ARGUMENT or NOT_FOUND that names the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import numpy as np
import pytest

from genie.auth import KeySet
from genie.protos import kserve_pb2 as pb
from genie.serving.grpc_server import start_grpc_server, stop_grpc_server
from genie.serving.http import HttpState
from genie.serving.kserve_grpc import SERVICE, kserve_service
from test_kserve_door import DoublingService, catalog

tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import aio as tritonaio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.arange(6, dtype=np.float32).reshape(2, 3)


@asynccontextmanager
async def door(service: DoublingService, **fields) -> AsyncIterator[str]:
    state = HttpState(catalog=catalog(service), **fields)
    server, port = await start_grpc_server(state, "127.0.0.1", 0, services=[kserve_service(state)])
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await stop_grpc_server(server, 0.5)


def tensor(name: str, array: np.ndarray, datatype: str = "FP32"):
    given = tritongrpc.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


async def test_health_and_metadata_through_tritonclient() -> None:
    service = DoublingService()
    async with door(service) as url:
        client = tritonaio.InferenceServerClient(url)
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("dbl") and await client.is_model_ready("llm")
        server = await client.get_server_metadata(as_json=True)
        assert server["name"] == "genie-serve" and server["extensions"] == ["binary_tensor_data"]
        meta = await client.get_model_metadata("dbl", as_json=True)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "3"]}]  # int64 as JSON strings
        assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": ["-1", "3"]}]
        assert meta["versions"] == ["1"] and meta["platform"] == "pytorch"
        llm = await client.get_model_metadata("llm", as_json=True)
        assert llm["name"] == "llm" and "inputs" not in llm  # empty lists are left out of the JSON form
        service.ready = False
        assert not await client.is_server_ready() and not await client.is_model_ready("dbl")
        await client.close()


async def test_infer_over_raw_contents_one_job_per_row() -> None:
    service = DoublingService()
    async with door(service) as url:
        client = tritonaio.InferenceServerClient(url)
        result = await client.infer("dbl", [tensor("x", X)], request_id="r1")
        np.testing.assert_array_equal(result.as_numpy("y"), X * 2)
        assert result.get_response().id == "r1" and result.get_response().model_version == "1"
        await client.close()
    assert [list(r["x"].shape) for r in service.rows] == [[1, 3], [1, 3]]


async def test_class_count_gives_the_top_classes_in_raw_bytes() -> None:
    async with door(DoublingService()) as url:
        client = tritonaio.InferenceServerClient(url)
        wanted = [tritongrpc.InferRequestedOutput("y", class_count=2)]
        result = await client.infer("dbl", [tensor("x", X)], outputs=wanted)
        await client.close()
    assert result.as_numpy("y").tolist() == [[b"4.000000:2", b"2.000000:1"], [b"10.000000:2", b"8.000000:1"]]


async def call(url: str, method: str, request, response_type):
    async with grpc.aio.insecure_channel(url) as channel:
        rpc = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                                  response_deserializer=response_type.FromString)
        return await rpc(request)


def typed_request(raw_input_contents: list[bytes] = (), **tensor) -> pb.ModelInferRequest:
    """One input `x` (FP32 [2, 3] unless `tensor` says otherwise) for model dbl."""
    request = pb.ModelInferRequest(model_name="dbl", raw_input_contents=raw_input_contents)
    request.inputs.add(**({"name": "x", "datatype": "FP32", "shape": [2, 3]} | tensor))
    return request


async def test_typed_contents_are_taken_and_outputs_come_raw() -> None:
    async with door(DoublingService()) as url:
        request = typed_request(contents=pb.InferTensorContents(fp32_contents=X.reshape(-1).tolist()))
        reply = await call(url, "ModelInfer", request, pb.ModelInferResponse)
    assert [(o.name, o.datatype, list(o.shape)) for o in reply.outputs] == [("y", "FP32", [2, 3])]
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 3), X * 2)


def raw(*arrays: np.ndarray) -> dict:
    return {"raw_input_contents": [a.tobytes() for a in arrays]}


BAD = [  # (what, request, code, words in the message)
    ("unknown model", pb.ModelInferRequest(model_name="nope", inputs=[{"name": "x"}]), "NOT_FOUND",
     "model 'nope' is not served here"),
    ("wrong version", pb.ModelInferRequest(model_name="dbl", model_version="7"), "NOT_FOUND", "no version '7'"),
    ("an LLM", pb.ModelInferRequest(model_name="llm"), "INVALID_ARGUMENT", "is an LLM"),
    ("no inputs", pb.ModelInferRequest(model_name="dbl"), "INVALID_ARGUMENT", "'inputs' is required"),
    ("wrong name", pb.ModelInferRequest(model_name="dbl", inputs=[{"name": "z", "datatype": "FP32", "shape": [2, 3]}],
                                        **raw(X)), "INVALID_ARGUMENT", "input 'z' is not an input"),
    ("wrong datatype", typed_request(datatype="INT64", contents={"int64_contents": list(range(6))}),
     "INVALID_ARGUMENT", "input 'x' has datatype INT64"),
    ("unknown datatype", typed_request(datatype="FLOAT"), "INVALID_ARGUMENT", "input 'x'.datatype \"FLOAT\""),
    ("wrong shape", typed_request(shape=[3, 2], contents={"fp32_contents": [0.0] * 6}), "INVALID_ARGUMENT",
     "input 'x' has shape [3, 2]"),
    ("negative shape", typed_request(shape=[-1, 3]), "INVALID_ARGUMENT", "input 'x'.shape must hold"),
    ("short raw bytes", typed_request(**raw(X[:1])), "INVALID_ARGUMENT", "input 'x' (raw_input_contents[0])"),
    ("raw for some inputs", pb.ModelInferRequest(
        model_name="dbl", inputs=[{"name": "x", "datatype": "FP32", "shape": [2, 3]}] * 2, **raw(X)),
     "INVALID_ARGUMENT", "raw_input_contents has 1 entries for 2 inputs"),
    ("few typed elements", typed_request(contents={"fp32_contents": [1.0]}), "INVALID_ARGUMENT",
     "input 'x'.contents.fp32_contents has 1 elements"),
    ("batch over max_batch_size", typed_request(shape=[5, 3], **raw(np.zeros((5, 3), np.float32))),
     "INVALID_ARGUMENT", "batch of 5"),
    ("unknown output", typed_request(**raw(X)), "INVALID_ARGUMENT", "output 'q' is not an output"),
]


@pytest.mark.parametrize("what, request_, code, words", BAD, ids=[b[0] for b in BAD])
async def test_bad_requests_are_refused_with_a_status_that_names_the_field(what, request_, code, words) -> None:
    if what == "unknown output":
        request_.outputs.add(name="q")
    service = DoublingService()
    async with door(service) as url:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(url, "ModelInfer", request_, pb.ModelInferResponse)
        assert refused.value.code() == grpc.StatusCode[code], refused.value.details()
        assert words in refused.value.details(), refused.value.details()
        good = await call(url, "ModelInfer", typed_request(**raw(X)), pb.ModelInferResponse)
        assert len(good.raw_output_contents) == 1  # the door keeps serving
    assert len(service.rows) == 2


async def test_every_call_needs_the_key_when_the_server_has_keys() -> None:
    async with door(DoublingService(), api_keys=KeySet(["sk-k"])) as url:
        client = tritonaio.InferenceServerClient(url)
        with pytest.raises(InferenceServerException, match="needs an API key"):
            await client.is_server_live()
        with pytest.raises(InferenceServerException, match="not valid"):
            await client.infer("dbl", [tensor("x", X)], headers={"authorization": "Bearer wrong"})
        result = await client.infer("dbl", [tensor("x", X)], headers={"authorization": "Bearer sk-k"})
        np.testing.assert_array_equal(result.as_numpy("y"), X * 2)
        await client.close()
