"""genie-serve (CLI subprocess, two workers) serving the demo recommender as a recsys split, through the real
`tritonclient`: the tables on one worker, the dense interaction + MLP on the other; scores equal the one-worker
model; the bytes the tables worker sends per request (its own Stats counters) match the plan's predicted pooled
embeddings within 5%, far below what shipping the tables would cost. And a pinned strategy that does not apply
is refused at start, in one line, with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import shipped_config
from genie.serving.demo_models import tiny_recommender
from genie.serving.demo_recommender import TinyRecommender
from served import get_json, recommender_infer, recommender_rows

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

MODEL = "recommender-demo"
BATCH = 8  # the planner's batch (PlanOptions.batch): each request below is one forward of this many rows
POOLED = len(TinyRecommender.TABLE_ROWS) * TinyRecommender.DIM * 4  # bytes per request: 4 tables x 16 x fp32


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def server(serve_config, home):
    config = shipped_config("recommender.yaml")
    assert config["model"]["strategy"] == "recsys_split"
    config["model"] |= {"max_batch_size": 32}
    config["registry"] = {"home": str(home)}
    return serve_config(config)


def rows(n: int, seed: int):
    return recommender_rows(n, seed, TinyRecommender.TABLE_ROWS, TinyRecommender.DENSE)


def infer(client, module, sparse, dense):
    return recommender_infer(client, module, MODEL, sparse, dense)


def one_worker(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    model, _ = tiny_recommender()
    with torch.no_grad():
        return model(sparse_ids=torch.from_numpy(sparse), dense=torch.from_numpy(dense))["scores"].numpy()


def test_split_scores_equal_the_whole_model_and_only_pooled_embeddings_cross(server) -> None:
    http = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    grpc = grpcclient.InferenceServerClient(url=server.grpc_address)
    for seed in range(12):
        sparse, dense = rows(BATCH, seed)
        client, module = (grpc, grpcclient) if seed % 3 == 0 else (http, httpclient)
        np.testing.assert_array_equal(infer(client, module, sparse, dense), one_worker(sparse, dense))
    status, body = get_json(f"{server.url}/v1/genie/plans")
    assert status == 200
    (report,) = body["data"]
    assert report["strategy"] == "recsys_split"
    frags = {f["role"]: f for f in report["fragments"]}
    assert frags["sparse"]["worker"] != frags["dense"]["worker"]
    # Each side holds only its own weights: the tables (100+50+200+30 rows x 16 x fp32) and the rest.
    assert frags["sparse"]["measured"]["weight_bytes"] == sum(TinyRecommender.TABLE_ROWS) * 16 * 4
    assert frags["dense"]["measured"]["weight_bytes"] == frags["dense"]["predicted"]["param_bytes"]
    assert frags["sparse"]["measured"]["rows"] == 12 * BATCH
    assert frags["sparse"]["measured"]["step_s_at_planned_batch"] > 0
    (link,) = report["links"]
    assert (link["src"], link["dst"], link["predicted_bytes_per_request"]) == ("sparse0", "dense", POOLED)
    assert link["measured_payload_bytes_per_request"] == POOLED
    framed = link["measured_worker_bytes_per_request"]  # the tables worker's bytes_sent over the rows it served
    assert abs(framed - POOLED) / POOLED < 0.05, link
    assert link["shipping_the_tables_bytes"] > 50 * framed


def test_a_pinned_strategy_that_does_not_apply_is_refused_at_start(server, home, tmp_path, capsys) -> None:
    from genie.serving.cli import main

    config = shipped_config("recommender.yaml")
    config["model"] |= {"strategy": "branch_parallel"}
    config["registry"] = {"home": str(home)}  # registered already by the server above: no analysis here
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--log-level", "error"]) != 0  # the CLI's own entry point, in-process
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("genie-serve: model 'recommender-demo': strategy branch_parallel was pinned")
    assert "recsys model" in line
