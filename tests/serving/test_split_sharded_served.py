"""genie-serve (CLI subprocess, configs/recsys-sharded.yaml: two workers of 2 MiB planning budget) serving a
recommender whose 40 000-row table fits neither worker, through the real `tritonclient`: the planner shards that
table by rows over both workers, the scores equal the one-worker model exactly, and the bytes each tables worker
sends per example (its own Stats counters) match the plan's prediction within 5%."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shipped_config
from genie.serving.demo_models import big_table_recommender
from genie.serving.demo_recommender import BigTableRecommender
from served import get_json, recommender_infer, recommender_rows

pytestmark = pytest.mark.slow
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

MODEL = "recommender-sharded"
ROWS = BigTableRecommender.TABLE_ROWS
POOLED = len(ROWS) * BigTableRecommender.DIM * 4  # the whole pooled layout of one example, fp32


@pytest.fixture(scope="module")
def server(serve_config):
    return serve_config(shipped_config("recsys-sharded.yaml"))


def rows(n: int, seed: int):
    return recommender_rows(n, seed, ROWS, BigTableRecommender.DENSE)


def infer(client, module, sparse, dense):
    return recommender_infer(client, module, MODEL, sparse, dense)


def test_the_sharded_table_serves_the_whole_models_scores_and_the_links_carry_the_prediction(server) -> None:
    model, _ = big_table_recommender()
    http = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    grpc = grpcclient.InferenceServerClient(url=server.grpc_address)
    for seed in range(8):
        sparse, dense = rows(16, seed)
        client, module = (grpc, grpcclient) if seed % 2 else (http, httpclient)
        with torch.no_grad():
            want = model(sparse_ids=torch.from_numpy(sparse), dense=torch.from_numpy(dense))["scores"].numpy()
        np.testing.assert_array_equal(infer(client, module, sparse, dense), want)
    bad = rows(1, 99)[0]
    bad[0, 2] = ROWS[2]
    with pytest.raises(Exception, match="outside embedding table 'tables.2'"):
        infer(http, httpclient, bad, rows(1, 99)[1])
    _, body = get_json(f"{server.url}/v1/genie/plans")
    (report,) = body["data"]
    assert report["strategy"] == "recsys_split"
    sparse_frags = [f for f in report["fragments"] if f["role"] == "sparse"]
    dense_worker = next(f["worker"] for f in report["fragments"] if f["role"] == "dense")
    assert len({f["worker"] for f in sparse_frags}) == 2
    whole_table = ROWS[2] * BigTableRecommender.DIM * 4
    assert all(f["measured"]["weight_bytes"] < whole_table for f in sparse_frags)  # nobody holds it whole
    links = report["links"]
    assert len(links) == 2
    for link in links:
        assert link["predicted_bytes_per_request"] == link["measured_payload_bytes_per_request"] == POOLED, link
    src_worker = {f["fragment_id"]: f["worker"] for f in sparse_frags}
    alone = [k for k in links if src_worker[k["src"]] != dense_worker]  # its worker sends nothing else
    assert alone, links
    for link in alone:
        framed = link["measured_worker_bytes_per_request"]
        assert abs(framed - POOLED) / POOLED < 0.05, link
