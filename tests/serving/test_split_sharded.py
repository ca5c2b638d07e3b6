"""Row-sharded embedding tables without processes: a recommender whose largest table fits no worker is planned
with that table cut by rows over two workers; each tables fragment (the real worker part, run here) holds only
its rows and tables and sends the whole pooled layout with zeros where it holds nothing; the executor adds the
parts, and the scores equal the whole model exactly; the bytes on each link are the plan's prediction."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.semantic import ClusterSpec, WorkerSpec, analyze, plan
from genie.serving.demo_models import big_table_recommender
from genie.serving.demo_recommender import BigTableRecommender
from genie.serving.replica import Replica, Stage
from genie.serving.stateless.split import recsys_executor, split_specs
from genie.workers.contract import STATELESS, FragmentSpec
from genie.workers.stateless.fragment import StatelessFragment
from genie.workers.stateless.loading import Built, InputSig
from genie.workers.stateless.split import split_part

MiB = 2**20
ROWS = BigTableRecommender.TABLE_ROWS
POOLED = len(ROWS) * BigTableRecommender.DIM * 4  # bytes per example of the whole pooled layout


@pytest.fixture(scope="module")
def sharded_plan():
    model, example = big_table_recommender()
    cluster = ClusterSpec(tuple(WorkerSpec(f"worker-{i}", "cpu", 2 * MiB, 5e10, 1e10) for i in range(2)), 1e9)
    return plan(analyze(model, example, "big-table"), cluster)


def built() -> Built:
    model, _ = big_table_recommender()
    sigs = (InputSig("sparse_ids", True, (1, len(ROWS))), InputSig("dense", False, (1, BigTableRecommender.DENSE)))
    return Built(model, sigs, frozenset({"sparse_ids", "dense"}), True, None, None, None, "py")


class Worker:
    def __init__(self, fragment: StatelessFragment) -> None:
        self.fragment, self.last_infer_compute_s = fragment, 0.0

    async def infer(self, fragment_id: str, inputs, timeout: float | None = None):
        with torch.no_grad():
            return self.fragment.run(inputs)


@pytest.fixture(scope="module")
def fragments(sharded_plan):
    specs = split_specs(sharded_plan, FragmentSpec(fragment_id="", model_dir="", dtype="float32", kind=STATELESS))
    return {fid: StatelessFragment(fid, split_part(built(), s.part, s.cut, fid), torch.float32,
                                   torch.device("cpu")) for fid, s in specs.items()}


def test_the_big_table_is_sharded_by_rows_over_both_workers(sharded_plan) -> None:
    assert sharded_plan.strategy == "recsys_split"
    sparse = [f for f in sharded_plan.fragments if f.role == "sparse"]
    shards = sorted(n for f in sparse for n in f.nodes if n.startswith("tables.2["))
    assert len(shards) == 2 and len({f.worker for f in sparse}) == 2
    bounds = sorted(tuple(int(x) for x in s[len("tables.2["):-1].split(":")) for s in shards)
    assert bounds[0][0] == 0 and bounds[0][1] == bounds[1][0] and bounds[1][1] == ROWS[2]
    assert all(f.param_bytes <= 0.9 * 2 * MiB for f in sparse)
    assert [(t.src, t.dst, t.bytes_per_request) for t in sharded_plan.transfers] == [
        (f.fragment_id, "dense", POOLED) for f in sorted(sparse, key=lambda f: f.fragment_id)]


async def test_sharded_lookups_add_up_to_the_whole_model_and_each_link_carries_the_prediction(
        sharded_plan, fragments) -> None:
    groups = sharded_plan.replicas()[0]
    replica = Replica("replica-0", [Stage(f.worker, Worker(fragments[f.fragment_id]), f.fragment_id)
                                    for f in groups], 0, warm=True)
    execute, info = recsys_executor([fragments[f.fragment_id].info for f in groups])
    assert [s.name for s in info.inputs] == ["sparse_ids", "dense"]
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, r, (64,), generator=g) for r in ROWS], 1)
    dense = torch.randn(64, BigTableRecommender.DENSE, generator=g)
    got = await execute(replica, {"sparse_ids": ids, "dense": dense}, 30.0)
    model, _ = big_table_recommender()
    with torch.no_grad():
        assert torch.equal(got["scores"], model(sparse_ids=ids, dense=dense)["scores"])
    whole_table = ROWS[2] * BigTableRecommender.DIM * 4
    for f in groups[:-1]:
        assert fragments[f.fragment_id].info.weight_bytes < whole_table  # no worker holds the big table whole
        meter = execute.meters[f.fragment_id]
        assert meter.got_bytes / meter.rows == POOLED == sharded_plan.transfers[0].bytes_per_request


async def test_an_id_past_the_sharded_table_is_the_callers_error(sharded_plan, fragments) -> None:
    groups = sharded_plan.replicas()[0]
    shard = next(f for f in groups if any(n.startswith("tables.2[") for n in f.nodes))
    ids = torch.tensor([[0, 0, ROWS[2], 0]])
    with pytest.raises(InvalidRequest, match="outside embedding table 'tables.2' \\(40000 rows"):
        fragments[shard.fragment_id].run({"sparse_ids": ids})
