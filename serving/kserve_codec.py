"""The KServe v2 (Open Inference Protocol) wire format, pure: datatypes, JSON and binary tensors, BYTES prefixes.

A request body is a JSON header, optionally followed by raw tensor bytes (Triton's binary tensor data
extension): `Inference-Header-Content-Length: N` says the first N bytes are the JSON, and each input with
`parameters.binary_data_size` takes that many of the bytes after it, in input order. Numbers travel
little-endian and row-major; a BYTES element is a 4-byte little-endian length and then its bytes.
Every refusal is an InvalidRequest whose message names the field.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from genie.errors import InvalidRequest

from .http_guard import parse_json

BYTES = "BYTES"
# v2 datatype -> torch dtype name (as TensorSpec.dtype spells it); BYTES has no torch dtype
TORCH_NAMES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
               "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
               "FP32": "float32", "FP64": "float64", "BF16": "bfloat16"}
V2_NAMES = {torch_name: v2 for v2, torch_name in TORCH_NAMES.items()}
_WIRE = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
         "BF16": "<i2"}  # numpy has no bfloat16: its bits travel as int16 and are viewed as bfloat16 in torch
_PREFIX = struct.Struct("<I")
_NOTHING = object()


@dataclass(frozen=True, slots=True)
class WireTensor:
    """A named tensor as the protocol carries it. value: a torch tensor of `shape`, or (BYTES) the elements,
    flat and row-major."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: torch.Tensor | tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: tuple[WireTensor, ...]
    outputs: dict[str, bool] | None  # requested output -> send it binary; None: every output
    binary_output: bool  # parameters.binary_data_output: the default for outputs not asked for by name
    classes: dict[str, int] = field(default_factory=dict)  # output -> its top-k classes instead of its values


def v2_datatype(torch_name: str) -> str:
    return V2_NAMES.get(torch_name, torch_name.upper())


# -- BYTES elements ---------------------------------------------------------------------------------------

def encode_bytes(items: tuple[bytes, ...] | list[bytes]) -> bytes:
    return b"".join(_PREFIX.pack(len(item)) + item for item in items)


def decode_bytes(raw: bytes, count: int, where: str) -> tuple[bytes, ...]:
    """`count` length-prefixed elements that fill `raw` exactly."""
    items, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidRequest(f"{where}: the binary data ends before element {i} of {count} (no 4-byte length)")
        (size,) = _PREFIX.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidRequest(f"{where}: element {i} says {size} bytes but only {len(raw) - pos} are left")
        items.append(bytes(raw[pos:pos + size]))
        pos += size
    if pos != len(raw):
        raise InvalidRequest(f"{where}: {len(raw) - pos} bytes are left after the {count} elements the shape holds")
    return tuple(items)


# -- one tensor -------------------------------------------------------------------------------------------

def _native(datatype: str) -> np.dtype:
    return np.dtype(_WIRE[datatype]).newbyteorder("=")


def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise InvalidRequest(f"{where}.shape must be a list of non-negative integers, got {json.dumps(shape)}")
    return tuple(shape)


def check_datatype(datatype: Any, where: str) -> str:
    if datatype != BYTES and datatype not in TORCH_NAMES:
        known = ", ".join([*TORCH_NAMES, BYTES])
        raise InvalidRequest(f"{where}.datatype {json.dumps(datatype)} is not a v2 datatype; use one of {known}")
    return datatype


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _element_ok(datatype: str) -> Any:
    if datatype == BYTES:
        return lambda x: isinstance(x, str)
    if datatype == "BOOL":
        return lambda x: type(x) is bool
    if datatype.startswith(("FP", "BF")):
        return lambda x: type(x) in (int, float)
    return lambda x: type(x) is int


def _from_json(datatype: str, shape: tuple[int, ...], data: Any, where: str) -> torch.Tensor | tuple[bytes, ...]:
    try:
        flat = _flatten(data)
    except RecursionError:
        raise InvalidRequest(f"{where}.data nests too deeply; send it flat, row-major") from None
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidRequest(f"{where}.data has {len(flat)} elements; shape {list(shape)} needs {count}")
    ok = _element_ok(datatype)
    bad = next((x for x in flat if not ok(x)), _NOTHING)
    if bad is not _NOTHING:
        kind = "strings" if datatype == BYTES else "booleans" if datatype == "BOOL" else f"{datatype} numbers"
        raise InvalidRequest(f"{where}.data must hold {kind}; it holds {json.dumps(bad)[:40]}")
    if datatype == BYTES:
        return tuple(s.encode("utf-8") for s in flat)
    try:
        if datatype == "BF16":
            return torch.tensor(flat, dtype=torch.bfloat16).reshape(shape)
        return torch.from_numpy(np.asarray(flat, dtype=_native(datatype)).reshape(shape))
    except (OverflowError, ValueError) as exc:
        raise InvalidRequest(f"{where}.data does not fit {datatype}: {exc}") from None


def from_raw(datatype: str, shape: tuple[int, ...], raw: bytes, where: str) -> torch.Tensor | tuple[bytes, ...]:
    count = math.prod(shape)
    if datatype == BYTES:
        return decode_bytes(raw, count, where)
    wire = np.dtype(_WIRE[datatype])
    if len(raw) != count * wire.itemsize:
        raise InvalidRequest(f"{where}.parameters.binary_data_size is {len(raw)} bytes; shape {list(shape)} of "
                             f"{datatype} needs {count * wire.itemsize}")
    if datatype == "BOOL":  # any nonzero byte is true; a bool tensor must hold only 0 and 1
        array = (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    else:
        array = np.frombuffer(raw, dtype=wire).astype(_native(datatype), copy=True).reshape(shape)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if datatype == "BF16" else tensor


def _binary_size(tensor: dict, where: str) -> int | None:
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where}.parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise InvalidRequest(f"{where}.parameters.binary_data_size must be a non-negative integer, got {size!r}")
    return size


def _input(tensor: Any, where: str, tail: memoryview, pos: int) -> tuple[WireTensor, int]:
    """One input and where the next input's bytes start in `tail`."""
    if not isinstance(tensor, dict):
        raise InvalidRequest(f"{where} must be an object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.name is required and must be a string")
    where = f"input '{name}'"
    datatype = check_datatype(tensor.get("datatype"), where)
    shape = check_shape(tensor.get("shape"), where)
    size = _binary_size(tensor, where)
    if size is None:
        if "data" not in tensor:
            raise InvalidRequest(f"{where} has neither data nor parameters.binary_data_size")
        return WireTensor(name, datatype, shape, _from_json(datatype, shape, tensor["data"], where)), pos
    if "data" in tensor:
        raise InvalidRequest(f"{where} has both data and parameters.binary_data_size; send one")
    if pos + size > len(tail):
        raise InvalidRequest(f"{where}.parameters.binary_data_size is {size} bytes but only {len(tail) - pos} "
                             "binary bytes are left in the body")
    value = from_raw(datatype, shape, bytes(tail[pos:pos + size]), where)
    return WireTensor(name, datatype, shape, value), pos + size


# -- a whole request --------------------------------------------------------------------------------------

def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail, as Inference-Header-Content-Length divides them."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InvalidRequest(f"header Inference-Header-Content-Length is {header_length!r}; it must be the byte "
                             f"length of the JSON part, at most the body's {len(body)} bytes")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def class_count(value: Any, output: str) -> int | None:
    """parameters.classification of an output: how many top classes to send (None: not asked)."""
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise InvalidRequest(f"output '{output}'.parameters.classification must be a positive integer (the number "
                             f"of top classes to return), got {json.dumps(value)[:40]}")
    return value


def _requested(outputs: Any, default: bool) -> tuple[dict[str, bool] | None, dict[str, int]]:
    if outputs is None:
        return None, {}
    if not isinstance(outputs, list):
        raise InvalidRequest("'outputs' must be a list of {name, parameters} objects")
    chosen: dict[str, bool] = {}
    classes: dict[str, int] = {}
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidRequest(f"outputs[{i}].name is required and must be a string")
        params = out.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidRequest(f"output '{out['name']}'.parameters must be an object")
        count = class_count(params.get("classification"), out["name"])
        if count is not None:
            classes[out["name"]] = count
        binary = params.get("binary_data", default)
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output '{out['name']}'.parameters.binary_data must be true or false")
        chosen[out["name"]] = binary
    return chosen, classes


def _parse_head(head: bytes, header_length: str | None) -> Any:
    try:
        return parse_json(head)
    except InvalidRequest as exc:
        if header_length is None:
            raise
        # a length that cuts the JSON short or runs into the binary part: say which number is wrong
        raise InvalidRequest(f"header Inference-Header-Content-Length is {header_length.strip()}, but the first "
                             f"{len(head)} bytes of the body are not the whole JSON part ({exc}); send the "
                             "JSON part's byte length") from None


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request's inputs decoded, with which outputs it wants and how."""
    head, tail = split_body(body, header_length)
    doc = _parse_head(head, header_length)
    if not isinstance(doc, dict):
        raise InvalidRequest("the inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' is required: a non-empty list of {name, shape, datatype, data} objects")
    decoded, pos = [], 0
    for i, tensor in enumerate(inputs):
        one, pos = _input(tensor, f"inputs[{i}]", tail, pos)
        decoded.append(one)
    if pos != len(tail):
        raise InvalidRequest(f"the body has {len(tail) - pos} binary bytes that no input's "
                             "parameters.binary_data_size claims")
    names = [t.name for t in decoded]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InvalidRequest(f"input '{dup}' is given twice")
    params = doc.get("parameters") or {}
    binary = params.get("binary_data_output", False) if isinstance(params, dict) else None
    if not isinstance(binary, bool):
        raise InvalidRequest("'parameters.binary_data_output' must be true or false")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    outputs, classes = _requested(doc.get("outputs"), binary)
    return InferRequest(request_id, tuple(decoded), outputs, binary, classes)


# -- a response -------------------------------------------------------------------------------------------

def _json_data(tensor: WireTensor) -> list[Any]:
    if tensor.datatype == BYTES:
        return [item.decode("utf-8", errors="replace") for item in tensor.value]
    value = tensor.value.float() if tensor.datatype == "BF16" else tensor.value
    return value.reshape(-1).tolist()


def to_raw(tensor: WireTensor) -> bytes:
    if tensor.datatype == BYTES:
        return encode_bytes(tensor.value)
    value = tensor.value.contiguous()
    if tensor.datatype == "BF16":
        value = value.view(torch.int16)  # same bits; numpy cannot hold bfloat16
    return value.numpy().astype(_WIRE[tensor.datatype], copy=False).tobytes()


def encode_response(header: dict[str, Any], outputs: list[WireTensor],
                    binary: dict[str, bool]) -> tuple[bytes, int | None]:
    """The response body and, when any output travels binary, the length of its JSON part."""
    described, chunks = [], []
    for tensor in outputs:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary.get(tensor.name):
            raw = to_raw(tensor)
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = _json_data(tensor)
        described.append(out)
    head = json.dumps(header | {"outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
