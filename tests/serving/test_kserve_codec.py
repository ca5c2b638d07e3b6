"""The KServe v2 wire format, pure: every datatype round-trips through JSON and binary, BYTES length prefixes,
the binary tail split by Inference-Header-Content-Length, and every refusal names the field it is about.
The checks of a request against a model's TensorSpecs run on a stub entry (no server)."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import pytest
import torch

from genie.errors import InvalidRequest
from genie.serving.catalog import StatelessEntry
from genie.serving.kserve_codec import (
    BYTES, TORCH_NAMES, WireTensor, decode_bytes, encode_bytes, encode_response, parse_infer,
)
from genie.serving.kserve_infer import check_inputs, check_outputs, model_metadata, run
from genie.workers.contract import TensorSpec


def sample(datatype: str) -> torch.Tensor:
    values = torch.tensor([[0, 1, 2], [3, 4, 5]]) % (2 if datatype == "BOOL" else 6)
    return values.to(getattr(torch, TORCH_NAMES[datatype]))


def as_request(response: bytes, json_length: int | None) -> tuple[bytes, str | None]:
    """A response turned into a request with the same tensors (outputs become inputs)."""
    head = json.loads(response[:json_length] if json_length else response)
    body = json.dumps({"inputs": head["outputs"]}).encode()
    tail = response[json_length:] if json_length else b""
    return body + tail, str(len(body)) if json_length else None


def body(inputs: list[dict], tail: bytes = b"", **extra) -> tuple[bytes, str | None]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + tail, str(len(head)) if tail else None


def refused(raw: bytes, header: str | None) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_infer(raw, header)
    return str(info.value)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", sorted(TORCH_NAMES))
def test_every_datatype_round_trips(datatype: str, binary: bool) -> None:
    tensor = WireTensor("x", datatype, (2, 3), sample(datatype))
    response, json_length = encode_response({"model_name": "m"}, [tensor], {"x": binary})
    assert (json_length is not None) == binary
    (got,) = parse_infer(*as_request(response, json_length)).inputs
    assert got.datatype == datatype and got.shape == (2, 3)
    assert got.value.dtype == tensor.value.dtype and torch.equal(got.value, tensor.value)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bytes_round_trip(binary: bool) -> None:
    items = ("héllo".encode(), b"", b"x" * 300)
    tensor = WireTensor("text", BYTES, (3,), items)
    (got,) = parse_infer(*as_request(*encode_response({}, [tensor], {"text": binary}))).inputs
    assert got.value == items and got.shape == (3,)


def test_bytes_are_length_prefixed_little_endian() -> None:
    raw = encode_bytes([b"ab", b"", b"xyz"])
    assert raw == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0) + struct.pack("<I", 3) + b"xyz"
    assert decode_bytes(raw, 3, "input 'text'") == (b"ab", b"", b"xyz")


@pytest.mark.parametrize(("raw", "count", "says"), [
    (struct.pack("<I", 5) + b"ab", 1, "element 0 says 5 bytes"),
    (struct.pack("<I", 1) + b"a", 2, "before element 1 of 2"),
    (struct.pack("<I", 1) + b"ab", 1, "1 bytes are left"),
])
def test_bad_bytes_prefixes_are_refused(raw: bytes, count: int, says: str) -> None:
    with pytest.raises(InvalidRequest, match="input 'text'") as info:
        decode_bytes(raw, count, "input 'text'")
    assert says in str(info.value)


def test_binary_inputs_take_their_bytes_in_order_and_json_ones_none() -> None:
    a, c = torch.arange(4, dtype=torch.float32), torch.tensor([7, 8], dtype=torch.int64)
    raw, header = body([
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        {"name": "b", "datatype": "INT32", "shape": [1, 2], "data": [[1, 2]]},
        {"name": "c", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}},
    ], a.numpy().tobytes() + c.numpy().tobytes(), id="req-7",
        outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}])
    req = parse_infer(raw, header)
    assert [t.name for t in req.inputs] == ["a", "b", "c"] and req.id == "req-7"
    assert torch.equal(req.inputs[0].value, a.reshape(2, 2)) and torch.equal(req.inputs[2].value, c)
    assert req.inputs[1].value.tolist() == [[1, 2]] and req.inputs[1].value.dtype == torch.int32
    assert req.outputs == {"y": True, "z": False}


def test_binary_data_output_is_the_default_for_outputs() -> None:
    raw, header = body([{"name": "a", "datatype": "FP32", "shape": [1], "data": [1.0]}],
                       parameters={"binary_data_output": True}, outputs=[{"name": "y"}])
    req = parse_infer(raw, header)
    assert req.binary_output and req.outputs == {"y": True}


FP32 = {"name": "images", "datatype": "FP32", "shape": [1, 2]}


@pytest.mark.parametrize(("inputs", "tail", "header", "field"), [
    ([FP32 | {"data": [1.0]}], b"", None, "input 'images'.data has 1 elements"),
    ([FP32 | {"data": [1.0, "x"]}], b"", None, "input 'images'.data must hold FP32 numbers"),
    ([FP32 | {"datatype": "INT32", "data": [1.5, 2]}], b"", None, "input 'images'.data must hold INT32"),
    ([FP32 | {"datatype": "BOOL", "data": [1, 0]}], b"", None, "input 'images'.data must hold booleans"),
    ([FP32 | {"datatype": "UINT8", "data": [1, 300]}], b"", None, "input 'images'.data does not fit UINT8"),
    ([FP32 | {"datatype": "FLOAT", "data": [1.0, 2.0]}], b"", None, "input 'images'.datatype \"FLOAT\""),
    ([FP32 | {"shape": [1, -2], "data": []}], b"", None, "input 'images'.shape must be"),
    ([FP32], b"", None, "input 'images' has neither data"),
    ([FP32 | {"data": [1.0, 2.0], "parameters": {"binary_data_size": 8}}], bytes(8), "x", "both data"),
    ([FP32 | {"parameters": {"binary_data_size": 12}}], bytes(8), "x", "binary_data_size is 12 bytes but only 8"),
    ([FP32 | {"parameters": {"binary_data_size": 4}}], bytes(4), "x", "binary_data_size is 4 bytes; shape [1, 2]"),
    ([FP32 | {"parameters": {"binary_data_size": 8}}], bytes(12), "x", "4 binary bytes that no input"),
    ([FP32 | {"parameters": {"binary_data_size": -1}}], bytes(8), "x", "binary_data_size must be a non-negative"),
    ([FP32 | {"data": [1.0, 2.0]}] * 2, b"", None, "input 'images' is given twice"),
    ([{"datatype": "FP32", "shape": [1], "data": [1.0]}], b"", None, "inputs[0].name is required"),
    ([], b"", None, "'inputs' is required"),
])
def test_every_refusal_names_the_field(inputs, tail, header, field) -> None:
    raw, real_header = body(inputs, tail)
    assert field in refused(raw, real_header if header else None)


@pytest.mark.parametrize(("header", "says"), [("abc", "'abc'"), ("999", "'999'"), ("-1", "'-1'")])
def test_a_bad_header_length_is_refused(header: str, says: str) -> None:
    raw, _ = body([FP32 | {"data": [1.0, 2.0]}])
    message = refused(raw, header)
    assert "Inference-Header-Content-Length" in message and says in message


@pytest.mark.parametrize("off_by", [-3, 4])
def test_a_header_length_that_cuts_the_json_or_runs_into_the_binary_part_names_the_header(off_by: int) -> None:
    raw, header = body([FP32 | {"parameters": {"binary_data_size": 8}}], bytes(8))
    message = refused(raw, str(int(header) + off_by))
    assert f"Inference-Header-Content-Length is {int(header) + off_by}" in message and "not the whole JSON" in message


@pytest.mark.parametrize(("extra", "field"), [
    ({"id": 3}, "'id'"), ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output"),
    ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "output 'y'.parameters.binary_data"),
    ({"outputs": [{"name": "y", "parameters": {"classification": 0}}]}, "output 'y'.parameters.classification"),
    ({"outputs": [{"name": "y", "parameters": {"classification": "3"}}]}, "must be a positive integer"),
    ({"outputs": "y"}, "'outputs'"),
])
def test_refusals_outside_the_inputs_name_their_field(extra: dict, field: str) -> None:
    raw, header = body([FP32 | {"data": [1.0, 2.0]}], **extra)
    assert field in refused(raw, header)


def test_nested_json_data_is_row_major() -> None:
    raw, header = body([{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}])
    assert parse_infer(raw, header).inputs[0].value.tolist() == [[1, 2], [3, 4]]


# -- against a model's TensorSpecs (stub entry) --------------------------------------------------------------

def cnn_entry(max_batch: int = 8) -> StatelessEntry:
    service = SimpleNamespace(policy=SimpleNamespace(max_batch_size=max_batch), ready=True)
    return StatelessEntry(name="cnn", created=0, service=service,
                          inputs=(TensorSpec("images", "float32", (-1, 3, 16, 16)),),
                          outputs=(TensorSpec("output_0", "float32", (-1, 10)),
                                   TensorSpec("output_1", "float32", (-1, 8, 4, 4))))


def images(shape: list[int], datatype: str = "FP32", name: str = "images", **extra) -> bytes:
    count = 1
    for n in shape:
        count *= n
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                   "data": [0] * count}], **extra}).encode()


def test_the_metadata_gives_v2_datatypes_and_varying_dims() -> None:
    meta = model_metadata(cnn_entry())
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert [o["name"] for o in meta["outputs"]] == ["output_0", "output_1"] and meta["platform"] == "pytorch"


@pytest.mark.parametrize(("raw", "field"), [
    (images([2, 3, 16, 16], name="pixels"), "input 'pixels' is not an input of model 'cnn'"),
    (images([2, 3, 16, 16], datatype="INT64"), "input 'images' has datatype INT64; model 'cnn' takes FP32"),
    (images([2, 3, 8, 8]), "input 'images' has shape [2, 3, 8, 8]"),
    (images([2, 3, 16]), "input 'images' has shape [2, 3, 16]"),
    (images([9, 3, 16, 16]), "input 'images' has a batch of 9; model 'cnn' takes 1 to 8"),
    (images([0, 3, 16, 16]), "input 'images' has a batch of 0"),
])
def test_inputs_that_do_not_fit_the_model_are_refused_by_name(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_inputs(parse_infer(raw, None), cnn_entry())
    assert field in str(info.value)


def test_outputs_are_chosen_by_name() -> None:
    entry = cnn_entry()
    req = parse_infer(images([1, 3, 16, 16], outputs=[{"name": "output_1", "parameters": {"binary_data": True}}]),
                      None)
    assert check_inputs(req, entry).keys() == {"images"} and check_outputs(req, entry) == {"output_1": True}
    assert check_outputs(parse_infer(images([1, 3, 16, 16]), None), entry) == {"output_0": False, "output_1": False}
    with pytest.raises(InvalidRequest, match="output 'logits' is not an output of model 'cnn'"):
        check_outputs(parse_infer(images([1, 3, 16, 16], outputs=[{"name": "logits"}]), None), entry)


class StubTokenizer:
    async def encode_many_async(self, texts: list[str]) -> list[list[int]]:
        return [[len(word) for word in text.split()] for text in texts]


class RecordingTextService:
    def __init__(self) -> None:
        self.policy = SimpleNamespace(max_batch_size=8)
        self.rows: list[list[int]] = []

    async def run_ids(self, rows: list[list[int]]) -> list[dict[str, torch.Tensor]]:
        self.rows += rows
        return [{"embedding": torch.full((2,), float(sum(r)))} for r in rows]


def text_entry() -> StatelessEntry:
    return StatelessEntry(name="enc", created=0, service=RecordingTextService(),
                          inputs=(TensorSpec("input_ids", "int64", (-1, -1)),
                                  TensorSpec("attention_mask", "int64", (-1, -1))),
                          outputs=(TensorSpec("embedding", "float32", (-1, 2)),),
                          tokenizer=StubTokenizer(), max_tokens=4, vocab_size=100)


def text_request(*inputs: dict) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


IDS = {"name": "input_ids", "datatype": "INT64", "shape": [2, 3], "data": [[5, 6, 0], [7, 0, 0]]}
MASK = {"name": "attention_mask", "datatype": "INT32", "shape": [2, 3], "data": [[1, 1, 0], [1, 0, 0]]}


async def test_a_text_model_strips_padding_by_the_mask_and_tokenizes_text() -> None:
    entry = text_entry()
    req = parse_infer(text_request(IDS, MASK), None)
    (out,) = await run(entry, check_inputs(req, entry), check_outputs(req, entry))
    assert entry.service.rows == [[5, 6], [7]]
    assert out.name == "embedding" and out.datatype == "FP32" and out.value.tolist() == [[11, 11], [7, 7]]
    req = parse_infer(text_request({"name": "text", "datatype": "BYTES", "shape": [1], "data": ["ab cde"]}), None)
    await run(entry, check_inputs(req, entry), check_outputs(req, entry))
    assert entry.service.rows[-1] == [2, 3]
    assert [i["name"] for i in model_metadata(entry)["inputs"]] == ["text", "input_ids", "attention_mask"]


@pytest.mark.parametrize(("inputs", "field"), [
    ([MASK], "either input 'text'"),
    ([IDS, {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}], "either input 'text'"),
    ([IDS, MASK | {"shape": [2, 2], "data": [1, 1, 1, 1]}], "input 'attention_mask' has shape [2, 2]"),
    ([IDS | {"datatype": "FP32"}], "input 'input_ids' has datatype FP32; model 'enc' takes INT64 or INT32"),
    ([IDS | {"data": [5, 6, 100, 1, 1, 1]}], "input 'input_ids' holds token id 100"),
    ([IDS | {"shape": [1, 5], "data": [1, 2, 3, 4, 5]}], "input 'input_ids' row 0 has 5 tokens"),
    ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x" * 200]}], "input 'text' row 0 has 200 characters"),
])
async def test_text_inputs_that_do_not_fit_are_refused_by_name(inputs: list[dict], field: str) -> None:
    entry = text_entry()
    with pytest.raises(InvalidRequest) as info:
        req = parse_infer(text_request(*inputs), None)
        await run(entry, check_inputs(req, entry), check_outputs(req, entry))
    assert field in str(info.value)


def test_per_token_outputs_of_text_rows_are_cut_to_each_row_and_padded_to_the_longest() -> None:
    from genie.serving.kserve_infer import stack_rows
    from genie.workers.contract import TensorSpec

    hidden = TensorSpec("last_hidden_state", "float32", (-1, -1, 2))
    short, long = torch.ones(8, 2), torch.full((16, 2), 2.0)  # rows from forwards padded to 8 and to 16 tokens
    stacked = stack_rows([short, long], hidden, lengths=[3, 11])
    assert stacked.shape == (2, 11, 2)
    assert stacked[0, :3].eq(1).all() and not stacked[0, 3:].any() and stacked[1].eq(2).all()
    pooled = TensorSpec("embedding", "float32", (-1, 8))  # no token axis: stacked as they are
    assert stack_rows([torch.ones(8), torch.ones(8)], pooled, lengths=[3, 11]).shape == (2, 8)
