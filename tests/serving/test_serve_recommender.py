"""`genie-serve --config configs/recommender.yaml` (CLI subprocess, two workers) serving the demo DLRM-style
recommender built by a `py:` factory, driven by the real `tritonclient.http`: metadata named after the forward's
arguments, a batch equal to the module run here over binary and JSON tensors, concurrent requests sharing
forwards; and bad input (names, datatypes, shapes, binary lengths, batch size, ids outside a table) answered
with a 4xx that names the field, after which the server still serves."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.registry.store import Registry
from genie.serving.demo_models import tiny_recommender
from genie.serving.demo_recommender import TinyRecommender
from served import get_json, post_json

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "recommender-demo"
MAX_BATCH = 16
ROWS = TinyRecommender.TABLE_ROWS
_rng = np.random.default_rng(7)
SPARSE = np.stack([_rng.integers(0, rows, 8) for rows in ROWS], axis=1).astype(np.int64)  # [8, 4]
DENSE = _rng.standard_normal((8, TinyRecommender.DENSE)).astype(np.float32)  # [8, 8]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A registry of this module's own, so the model registered is always today's factory, not a cached one."""
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def server(serve_config, home):
    config = shipped_config("recommender.yaml")
    # A forward takes well under a millisecond, so with no queue delay concurrent requests rarely meet; 20 ms
    # lets them. A fixed max_batch_size gives the over-the-limit case a known edge.
    config["model"] |= {"max_queue_delay_ms": 20, "max_batch_size": MAX_BATCH}
    config["registry"] = {"home": str(home)}
    return serve_config(config)


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=120)


def tensors(sparse: np.ndarray, dense: np.ndarray, binary: bool = True, sparse_name: str = "sparse_ids",
            sparse_type: str = "INT64", dense_type: str = "FP32") -> list:
    given = [httpclient.InferInput(sparse_name, list(sparse.shape), sparse_type),
             httpclient.InferInput("dense", list(dense.shape), dense_type)]
    given[0].set_data_from_numpy(sparse, binary_data=binary)
    given[1].set_data_from_numpy(dense, binary_data=binary)
    return given


def scores(client, sparse: np.ndarray, dense: np.ndarray, binary: bool = True) -> np.ndarray:
    wanted = [httpclient.InferRequestedOutput("scores", binary_data=binary)]
    return client.infer(MODEL, tensors(sparse, dense, binary), outputs=wanted).as_numpy("scores")


def in_process(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    module, _ = tiny_recommender()
    with torch.no_grad():
        return module(sparse_ids=torch.from_numpy(sparse), dense=torch.from_numpy(dense))["scores"].numpy()


def still_serves(client) -> None:
    np.testing.assert_allclose(scores(client, SPARSE[:2], DENSE[:2]), in_process(SPARSE[:2], DENSE[:2]),
                               rtol=0, atol=1e-5)


def test_the_registry_profiles_the_factory_model_as_a_recommender(server, home) -> None:
    with Registry.open(home=home) as registry:
        profile = registry.get_profile(registry.resolve(MODEL))
    assert profile.workload_type == "recsys"
    assert [(i.name, i.modality) for i in profile.inputs] == [("sparse_ids", "sparse"), ("dense", "dense")]


def test_health_and_metadata_name_the_forwards_arguments(client) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "sparse_ids", "datatype": "INT64", "shape": [-1, len(ROWS)]},
                              {"name": "dense", "datatype": "FP32", "shape": [-1, TinyRecommender.DENSE]}]
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 1]}]


def test_a_batch_equals_the_module_in_process_over_binary_and_json(client) -> None:
    binary, as_json = scores(client, SPARSE, DENSE, True), scores(client, SPARSE, DENSE, False)
    assert binary.shape == (8, 1) and binary.dtype == np.float32
    np.testing.assert_allclose(binary, in_process(SPARSE, DENSE), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(binary, as_json)


def forwards(server) -> tuple[int, int]:
    """Forwards run so far over every worker, and the largest batch one of them ran."""
    workers = get_json(f"{server.url}/v1/genie/workers")[1]["data"]
    fragments = [f for w in workers for f in w["fragments"]]
    return sum(f["batches"] for f in fragments), max(f["max_batch"] for f in fragments)


def test_concurrent_requests_share_forwards_and_each_gets_its_own_answer(server, client) -> None:
    alone = [scores(client, SPARSE[i:i + 1], DENSE[i:i + 1]) for i in range(8)]
    before, _ = forwards(server)
    many = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=16,
                                            network_timeout=120)
    handles = [many.async_infer(MODEL, tensors(SPARSE[i % 8:i % 8 + 1], DENSE[i % 8:i % 8 + 1]),
                                outputs=[httpclient.InferRequestedOutput("scores")]) for i in range(32)]
    together = [h.get_result(timeout=120).as_numpy("scores") for h in handles]
    many.close()
    after, largest = forwards(server)
    # 32 one-row requests in fewer than 32 forwards: some forward ran several of them (max_batch is cumulative)
    assert after - before < 32 and largest > 1, (after - before, largest)
    for i, got in enumerate(together):
        np.testing.assert_allclose(got, alone[i % 8], rtol=0, atol=1e-5)


# -- bad input --------------------------------------------------------------------------------------------

def refused(client, sparse: np.ndarray, dense: np.ndarray, **how) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, tensors(sparse, dense, **how))
    return info.value


def post_raw(url: str, body: bytes, header_length: int) -> tuple[int, dict]:
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def binary_body(sparse_size: int, tail: bytes) -> tuple[bytes, int]:
    """A request for two rows whose sparse_ids claims `sparse_size` binary bytes, then `tail` as the binary part."""
    head = json.dumps({"inputs": [
        {"name": "sparse_ids", "datatype": "INT64", "shape": [2, len(ROWS)],
         "parameters": {"binary_data_size": sparse_size}},
        {"name": "dense", "datatype": "FP32", "shape": [2, TinyRecommender.DENSE], "data": DENSE[:2].ravel().tolist()},
    ]}).encode()
    return head + tail, len(head)


TWO = np.zeros((2, len(ROWS)), np.int64), np.zeros((2, TinyRecommender.DENSE), np.float32)
TOO_MANY = np.zeros((MAX_BATCH + 1, len(ROWS)), np.int64), np.zeros((MAX_BATCH + 1, TinyRecommender.DENSE), np.float32)
TRITON_CASES = {  # case: (sparse_ids, dense, how tensors() sends them), and what the refusal must say
    "name": ((*TWO, {"sparse_name": "ids"}), "input 'ids' is not an input of model 'recommender-demo'"),
    "datatype": ((TWO[0].astype(np.int32), TWO[1], {"sparse_type": "INT32"}), "input 'sparse_ids' has datatype INT32"),
    "dense_datatype": ((TWO[0], TWO[1].astype(np.float64), {"dense_type": "FP64"}), "input 'dense' has datatype FP64"),
    "shape": ((TWO[0][:, :3], TWO[1], {}), "input 'sparse_ids' has shape [2, 3]"),
    "batch": ((*TOO_MANY, {}), f"input 'sparse_ids' has a batch of {MAX_BATCH + 1}"),
    "disagreeing_batch": ((TWO[0], TOO_MANY[1], {}), "the inputs disagree on the batch size"),
}


@pytest.mark.parametrize("case", TRITON_CASES)
def test_tritonclient_bad_input_is_a_400_naming_the_field(client, case) -> None:
    (sparse, dense, how), field = TRITON_CASES[case]
    exc = refused(client, sparse, dense, **how)
    assert exc.status() == "400" and field in exc.message(), exc
    still_serves(client)


def json_input(name: str, datatype: str, shape: list[int], data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


GOOD_DENSE = json_input("dense", "FP32", [2, TinyRecommender.DENSE], DENSE[:2].ravel().tolist())
JSON_CASES = {  # case: the inputs of a JSON request, and what the refusal must say
    "missing_input": ([json_input("sparse_ids", "INT64", [2, 4], SPARSE[:2].ravel().tolist())],
                      "input 'dense' is missing"),
    "float_ids": ([json_input("sparse_ids", "INT64", [2, 4], [1.5] * 8), GOOD_DENSE],
                  "input 'sparse_ids'.data must hold INT64 numbers"),
    "too_few_elements": ([json_input("sparse_ids", "INT64", [2, 4], [1] * 7), GOOD_DENSE],
                         "input 'sparse_ids'.data has 7 elements; shape [2, 4] needs 8"),
    "unknown_datatype": ([json_input("sparse_ids", "LONG", [2, 4], [1] * 8), GOOD_DENSE],
                         "input 'sparse_ids'.datatype \"LONG\" is not a v2 datatype"),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_a_json_request_tritonclient_would_not_send_is_a_400_naming_the_field(server, client, case) -> None:
    inputs, field = JSON_CASES[case]
    status, error = post_json(f"{server.url}/v2/models/{MODEL}/infer", {"inputs": inputs})
    assert status == 400 and field in error["error"], (status, error)
    still_serves(client)


IDS = SPARSE[:2].tobytes()  # the binary part of a good two-row request: [2, 4] int64, 64 bytes
BINARY_CASES = {  # case: (sparse_ids' binary_data_size, the binary part, header length minus the JSON's), message
    "size_beyond_body": ((64, IDS[:40], 0), "input 'sparse_ids'.parameters.binary_data_size is 64 bytes but only 40"),
    "size_not_the_shape": ((40, IDS[:40], 0), "input 'sparse_ids'.parameters.binary_data_size is 40 bytes; "
                                              "shape [2, 4] of INT64 needs 64"),
    "bytes_left_over": ((64, IDS + bytes(72), 0), "72 binary bytes that no input's parameters.binary_data_size"),
    "header_past_body": ((64, IDS, len(IDS) + 1), "header Inference-Header-Content-Length is"),
    "header_inside_json": ((64, IDS, -5), "header Inference-Header-Content-Length is"),
    "header_into_binary": ((64, IDS, 8), "header Inference-Header-Content-Length is"),
}


@pytest.mark.parametrize("case", BINARY_CASES)
def test_a_binary_length_that_disagrees_is_a_400_naming_the_field(server, client, case) -> None:
    (size, tail, shift), field = BINARY_CASES[case]
    body, json_length = binary_body(size, tail)
    status, error = post_raw(f"{server.url}/v2/models/{MODEL}/infer", body, json_length + shift)
    assert status == 400 and field in error["error"], (status, error)
    good_status, good = post_raw(f"{server.url}/v2/models/{MODEL}/infer", *binary_body(64, IDS))
    assert good_status == 200 and good["outputs"][0]["name"] == "scores", good
    still_serves(client)


@pytest.mark.parametrize("column, bad_id", [(1, ROWS[1]), (0, -1), (2, 10**12)])
def test_an_id_outside_its_embedding_table_is_a_400_naming_the_input(client, column, bad_id) -> None:
    sparse = SPARSE[:2].copy()
    sparse[1, column] = bad_id
    exc = refused(client, sparse, DENSE[:2])
    says = f"input 'sparse_ids' column {column} holds id {bad_id}, outside embedding table 'tables.{column}'"
    assert exc.status() == "400" and says in exc.message(), exc
    still_serves(client)


def test_a_bad_id_sharing_a_batch_fails_its_own_request_only(server, client) -> None:
    bad = SPARSE[:1].copy()
    bad[0, 3] = ROWS[3]
    many = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), concurrency=16,
                                            network_timeout=120)
    handles = [many.async_infer(MODEL, tensors(bad if i % 4 == 0 else SPARSE[i % 8:i % 8 + 1],
                                               DENSE[i % 8:i % 8 + 1])) for i in range(16)]
    want = in_process(SPARSE, DENSE)
    for i, handle in enumerate(handles):
        if i % 4 == 0:
            with pytest.raises(InferenceServerException) as info:
                handle.get_result(timeout=120)
            assert info.value.status() == "400" and "input 'sparse_ids'" in info.value.message()
        else:
            np.testing.assert_allclose(handle.get_result(timeout=120).as_numpy("scores"), want[i % 8:i % 8 + 1],
                                       rtol=0, atol=1e-5)
    many.close()
    still_serves(client)


def test_grpc_metadata_and_a_batch_equal_the_module_and_bad_ids_are_invalid_argument(server, client) -> None:
    """The real tritonclient.grpc on the server's gRPC port: the same metadata, the same scores, and an id
    outside a table an INVALID_ARGUMENT naming the input, after which the door still serves."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    v2 = grpcclient.InferenceServerClient(url=server.grpc_address)

    def given(sparse: np.ndarray) -> list:
        inputs = [grpcclient.InferInput("sparse_ids", list(sparse.shape), "INT64"),
                  grpcclient.InferInput("dense", list(DENSE.shape), "FP32")]
        inputs[0].set_data_from_numpy(sparse)
        inputs[1].set_data_from_numpy(DENSE)
        return inputs

    meta = v2.get_model_metadata(MODEL, as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("sparse_ids", "INT64", ["-1", "4"]), ("dense", "FP32", ["-1", "8"])]
    got = v2.infer(MODEL, given(SPARSE)).as_numpy("scores")
    np.testing.assert_allclose(got, in_process(SPARSE, DENSE), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got, scores(client, SPARSE, DENSE))
    bad = SPARSE.copy()
    bad[3, 1] = ROWS[1]
    with pytest.raises(InferenceServerException) as refused:
        v2.infer(MODEL, given(bad))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", refused.value
    assert "input 'sparse_ids' column 1 holds id 50" in refused.value.message()
    np.testing.assert_allclose(v2.infer(MODEL, given(SPARSE)).as_numpy("scores"), got, rtol=0, atol=0)
    v2.close()
