"""The KServe v2 / Open Inference Protocol gRPC door: `inference.GRPCInferenceService` on the gRPC port.

It answers the protocol's six calls (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata,
ModelInfer) with the same model side as the HTTP door (`kserve_infer`): the same checks, the same messages,
each row of a request one job in the model's dynamic batcher. Inputs come raw (`raw_input_contents`, what
tritonclient sends) or typed (`contents`); outputs always go raw, in `raw_output_contents`, which is what
tritonclient reads. The messages are `genie.kserve` (protos/kserve.proto) and the service is registered here
by its protocol name, so a client's own copy of the protocol can live in the same process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import torch

from genie import __version__
from genie.errors import InvalidRequest
from genie.protos import kserve_pb2 as pb

from .catalog import StatelessEntry
from .grpc_server import map_errors
from .http import HttpState
from .kserve_codec import BYTES, InferRequest, WireTensor, check_datatype, class_count, from_raw, to_raw
from .kserve_infer import (VERSION, check_inputs, check_outputs, find_entry, llm_metadata, model_metadata, run,
                           tensor_model)

SERVICE = "inference.GRPCInferenceService"

# datatype -> the InferTensorContents field that holds it, and the numpy type its elements become
_CONTENTS: dict[str, tuple[str, Any]] = {
    "BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int8), "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32), "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8), "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32), "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32), "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", None),
}


def _shape(tensor: pb.ModelInferRequest.InferInputTensor, where: str) -> tuple[int, ...]:
    if any(n < 0 for n in tensor.shape):
        raise InvalidRequest(f"{where}.shape must hold non-negative integers, got {list(tensor.shape)}")
    return tuple(tensor.shape)


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...],
                   where: str) -> torch.Tensor | tuple[bytes, ...]:
    if tensor.datatype not in _CONTENTS:
        raise InvalidRequest(f"{where}: datatype {tensor.datatype} cannot travel in contents; send it in "
                             "raw_input_contents")
    field, numpy_type = _CONTENTS[tensor.datatype]
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidRequest(f"{where}.contents.{field} has {len(values)} elements; shape {list(shape)} needs "
                             f"{count}")
    if tensor.datatype == BYTES:
        return tuple(values)
    try:
        array = np.array(values, dtype=numpy_type)
    except OverflowError:
        raise InvalidRequest(f"{where}.contents.{field} holds a value that does not fit {tensor.datatype}") from None
    return torch.from_numpy(array.reshape(shape))


def _parameter(param: pb.InferParameter):
    choice = param.WhichOneof("parameter_choice")
    return None if choice is None else getattr(param, choice)


def _requested(request: pb.ModelInferRequest) -> tuple[dict[str, bool] | None, dict[str, int]]:
    if not request.outputs:
        return None, {}
    classes = {}
    for out in request.outputs:
        if "classification" in out.parameters:
            classes[out.name] = class_count(_parameter(out.parameters["classification"]), out.name)
    return {out.name: True for out in request.outputs}, classes


def infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """The request's inputs decoded; raw_input_contents, when given, holds one entry per input."""
    if not request.inputs:
        raise InvalidRequest("'inputs' is required: a non-empty list of input tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send "
                             "one per input, in input order")
    decoded = []
    for i, tensor in enumerate(request.inputs):
        if not tensor.name:
            raise InvalidRequest(f"inputs[{i}].name is required")
        where = f"input '{tensor.name}'"
        datatype = check_datatype(tensor.datatype, where)
        shape = _shape(tensor, where)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(f"{where} has contents while the request also has raw_input_contents; "
                                     "send one form")
            value = from_raw(datatype, shape, raw[i], f"{where} (raw_input_contents[{i}])")
        else:
            value = _from_contents(tensor, shape, where)
        decoded.append(WireTensor(tensor.name, datatype, shape, value))
    names = [t.name for t in decoded]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InvalidRequest(f"input '{dup}' is given twice")
    outputs, classes = _requested(request)
    return InferRequest(request.id or None, tuple(decoded), outputs, True, classes)


def _tensor_metadata(spec: dict) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])


class KServeServicer:
    """The protocol's calls; NOT_FOUND for a model not served, INVALID_ARGUMENT for a request it cannot take."""

    def __init__(self, state: HttpState) -> None:
        self.state = state

    @map_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    @map_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=all(e.service.ready for e in self.state.catalog.entries.values()))

    @map_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        entry = find_entry(self.state.catalog, request.name, request.version)
        return pb.ModelReadyResponse(ready=entry.service.ready)

    @map_errors
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name="genie-serve", version=__version__, extensions=["binary_tensor_data"])

    @map_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        entry = find_entry(self.state.catalog, request.name, request.version)
        meta = model_metadata(entry) if isinstance(entry, StatelessEntry) else llm_metadata(entry)
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=[_tensor_metadata(s) for s in meta["inputs"]],
                                        outputs=[_tensor_metadata(s) for s in meta["outputs"]])

    @map_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        entry = tensor_model(find_entry(self.state.catalog, request.model_name, request.model_version))
        req = infer_request(request)
        inputs = check_inputs(req, entry)
        wanted = check_outputs(req, entry)
        outputs = await run(entry, inputs, wanted, req.classes)
        reply = pb.ModelInferResponse(model_name=entry.name, model_version=VERSION, id=request.id)
        for tensor in outputs:
            reply.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            reply.raw_output_contents.append(to_raw(tensor))
        return reply


_MESSAGES: dict[str, tuple[type, type]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def kserve_service(state: HttpState) -> Callable[[grpc.aio.Server], None]:
    """What start_grpc_server calls to host the v2 service, behind the same key and size checks."""

    def add(server: grpc.aio.Server) -> None:
        servicer = KServeServicer(state)
        handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name),
                                                               request_deserializer=req.FromString,
                                                               response_serializer=resp.SerializeToString)
                    for name, (req, resp) in _MESSAGES.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    return add
