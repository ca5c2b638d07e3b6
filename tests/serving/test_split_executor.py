"""The recsys split's executor over fake workers that run the real split parts of the demo recommender in this
process: the tables worker gets only the sparse ids and gives back only the pooled embeddings, the dense worker
gets those and the dense features; scores equal the whole model; the meters count what crossed. Also what
serving makes of split plans (specs, refusals, the pinned plan), and the plan report's numbers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from genie.config import ModelConfig, Strategy
from genie.errors import ConfigError, InvalidRequest
from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.serving.demo_models import tiny_recommender
from genie.serving.demo_recommender import TinyRecommender
from genie.serving.metrics import Metrics
from genie.serving.plans import PlanReport, pin_plan
from genie.serving.replica import Replica, Stage
from genie.serving.start_stateless import served_plan
from genie.serving.stateless.batcher import BatchPolicy
from genie.serving.stateless.service import StatelessService
from genie.serving.stateless.split import RecsysSplit, split_info, split_specs
from genie.workers.codec import WorkerInfo, WorkerStats
from genie.workers.contract import STATELESS, FragmentInfo, FragmentSpec, TensorSpec
from genie.workers.stateless.loading import Built, InputSig
from genie.workers.stateless.split import split_part

Tensors = dict[str, torch.Tensor]
CUT = tuple(f"tables.{i}" for i in range(len(TinyRecommender.TABLE_ROWS)))
WIDTH = len(CUT) * TinyRecommender.DIM


@pytest.fixture(scope="module")
def model():
    return tiny_recommender()[0]


@pytest.fixture(scope="module")
def parts(model):
    sigs = (InputSig("sparse_ids", True, (1, len(CUT))), InputSig("dense", False, (1, TinyRecommender.DENSE)))
    built = Built(model, sigs, frozenset({"sparse_ids", "dense"}), True, None, None, None, "py")
    return split_part(built, "tables", CUT, "t"), split_part(built, "dense", CUT, "d")


class FakeWorker:
    """Runs one split part as a worker's Infer would: by input name, under no_grad; records what it was sent."""

    def __init__(self, fragment_id: str, module: torch.nn.Module) -> None:
        self.fragment_id, self.module = fragment_id, module
        self.calls: list[Tensors] = []
        self.last_infer_compute_s = 0.0

    async def infer(self, fragment_id: str, inputs: Tensors, timeout: float | None = None) -> Tensors:
        assert fragment_id == self.fragment_id
        self.calls.append(inputs)
        with torch.no_grad():
            out = self.module(**inputs)
        self.last_infer_compute_s = 0.001 * int(next(iter(inputs.values())).shape[0])
        return out

    async def info(self, timeout: float | None = None) -> WorkerInfo:
        return WorkerInfo("cpu", "fake", 1 << 30, 1 << 30, 20.0, 0.2, (), (self.fragment_id,), "0")

    async def stats(self, timeout: float | None = None) -> WorkerStats:
        return WorkerStats((), len(self.calls), 0, 0, 0)


def batch(n: int, seed: int = 0) -> Tensors:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, rows, (n,), generator=g) for rows in TinyRecommender.TABLE_ROWS], 1)
    return {"sparse_ids": ids, "dense": torch.randn(n, TinyRecommender.DENSE, generator=g)}


@pytest.fixture
def split(parts):
    tables, dense = FakeWorker("sparse0", parts[0].module), FakeWorker("dense", parts[1].module)
    replica = Replica("replica-0", [Stage("worker-0", tables, "sparse0"), Stage("worker-1", dense, "dense")], 0,
                      warm=True)
    return tables, dense, replica, RecsysSplit(("sparse_ids",), ("pooled", "dense"))


async def test_a_batch_crosses_as_pooled_embeddings_and_scores_equal_the_whole_model(model, split) -> None:
    tables, dense, replica, execute = split
    inputs = batch(8)
    out = await execute(replica, inputs, 30.0)
    with torch.no_grad():
        assert torch.equal(out["scores"], model(**inputs)["scores"])
    assert list(tables.calls[0]) == ["sparse_ids"]  # the tables never see the dense features
    assert sorted(dense.calls[0]) == ["dense", "pooled"]  # the MLP never sees an id
    assert list(dense.calls[0]["pooled"].shape) == [8, WIDTH]
    link = execute.meters["sparse0"]
    assert (link.rows, link.got_bytes, link.sent_bytes) == (8, 8 * WIDTH * 4, 8 * len(CUT) * 8)
    assert execute.meters["dense"].sent_bytes == 8 * (WIDTH + TinyRecommender.DENSE) * 4
    assert execute.meters["dense"].step_s(8) == pytest.approx(0.008)


async def test_the_service_batches_requests_through_the_split(model, split) -> None:
    tables, dense, replica, execute = split
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, max_queue=32, bucket_edges=())
    service = StatelessService("rec", {"replica-0": replica}, policy, Metrics(), timeout=30.0, migration_limit=1,
                               execute=execute)
    task = asyncio.create_task(service.run())
    try:
        inputs = batch(10, seed=3)
        rows = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(10)]
        outs = await asyncio.wait_for(service.run_tensors(rows), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert max(c["sparse_ids"].shape[0] for c in tables.calls) <= 4 and len(tables.calls) == len(dense.calls) >= 3
    got = torch.stack([o["scores"] for o in outs])
    # Each batch is checked against the whole model run on that batch's rows: a matmul's bits may depend on its
    # number of rows (MKL blocks by it), so 10 rows at once is not the same computation as batches of <= 4.
    covered = []
    with torch.no_grad():
        for call in dense.calls:
            rows = [next(i for i in range(len(outs)) if torch.equal(inputs["dense"][i], d)) for d in call["dense"]]
            want = model(**{k: v[rows] for k, v in inputs.items()})["scores"]
            assert torch.equal(got[rows], want), rows
            covered += rows
    assert sorted(covered) == list(range(len(outs)))
    assert execute.meters["sparse0"].rows == 10


async def test_tables_answering_something_else_fail_the_batch(split) -> None:
    tables, _, replica, execute = split
    tables.module = lambda **_: {"embeddings": torch.zeros(2, WIDTH)}
    with pytest.raises(RuntimeError, match="not 'pooled'"):
        await execute(replica, batch(2), 30.0)


def test_an_id_outside_a_table_is_refused_by_the_tables_fragment_naming_the_column(parts) -> None:
    from genie.workers.stateless.fragment import StatelessFragment

    fragment = StatelessFragment("sparse0", parts[0], torch.float32, torch.device("cpu"))
    assert [s.name for s in fragment.info.outputs] == ["pooled"] and fragment.info.weight_bytes == 24320
    bad = batch(2)["sparse_ids"]
    bad[1, 2] = 200
    with pytest.raises(InvalidRequest, match=r"input 'sparse_ids' column 2 holds id 200, outside .*tables.2"):
        fragment.run({"sparse_ids": bad})


def test_each_part_holds_only_its_own_weights(parts) -> None:
    tables, dense = (sorted(n for n, _ in p.module.named_parameters()) for p in parts)
    assert all(n.startswith("tables.") for n in tables) and len(tables) == len(CUT)
    assert not any(n.startswith("tables.") for n in dense) and dense


def test_a_cut_the_model_does_not_have_or_an_unknown_part_is_refused(parts, model) -> None:
    sigs = (InputSig("sparse_ids", True, (1, 4)), InputSig("dense", False, (1, 8)))
    built = Built(model, sigs, frozenset(), True, None, None, None, "py")
    with pytest.raises(InvalidRequest, match="calls no table 'tables.9'"):
        split_part(built, "tables", ("tables.9",), "t")
    with pytest.raises(InvalidRequest, match="part 'middle' is unknown"):
        split_part(built, "middle", CUT, "t")
    with pytest.raises(InvalidRequest, match="holds weights of the dense side"):
        split_part(built, "tables", ("top.2",), "t")  # top.2's input comes from the other modules


# -- what serving makes of split plans --------------------------------------------------------------------

@pytest.fixture(scope="module")
def rec_profile():
    return analyze(*tiny_recommender(), name="recommender-demo")  # a model of its own: no lookup hooks on it


def two_workers() -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"worker-{i}", "cpu", 1 << 30, 1e11, 2e10) for i in range(2)), 1.25e9)


def test_split_specs_cut_both_parts_at_the_plans_tables(rec_profile) -> None:
    p = plan(rec_profile, two_workers(), PlanOptions(strategy="recsys_split"))
    base = FragmentSpec(fragment_id="", model_dir="/m", kind=STATELESS)
    specs = split_specs(p, base)
    assert {(s.part, s.cut) for s in specs.values()} == {("tables", CUT), ("dense", CUT)}
    three = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 40_000, 1e11, 2e10) for i in range(3)), 1.25e9)
    spread = plan(rec_profile, three, PlanOptions(strategy="recsys_split", batch=1))
    sparse = [f for f in spread.fragments if f.role == "sparse"]
    assert len(sparse) == 2
    specs = split_specs(spread, base)  # each tables fragment names what it holds, and "~" what it does not
    for f in sparse:
        held = {c for c in specs[f.fragment_id].cut if not c.startswith("~")}
        assert held == set(f.nodes)
        assert {c[1:] for c in specs[f.fragment_id].cut if c.startswith("~")} == set(CUT) - held
    assert specs["dense"].cut == CUT
    with pytest.raises(InvalidRequest, match="2 replicas"):
        split_specs(dataclasses.replace(spread, fragments=[*spread.fragments, dataclasses.replace(
            spread.fragments[0], fragment_id="x", replica=1)]), base)


def test_split_info_shows_the_model_inputs_not_pooled() -> None:
    def info(inputs, outputs) -> FragmentInfo:
        return FragmentInfo("f", 0, 0, 0, 10, 0, 0, 0, "float32", STATELESS, inputs, outputs)

    ids, pooled = TensorSpec("sparse_ids", "int64", (-1, 4)), TensorSpec("pooled", "float32", (-1, WIDTH))
    dense, scores = TensorSpec("dense", "float32", (-1, 8)), TensorSpec("scores", "float32", (-1, 1))
    merged = split_info([info((ids,), (pooled,)), info((pooled, dense), (scores,))])
    assert (merged.inputs, merged.outputs, merged.weight_bytes) == ((ids, dense), (scores,), 20)


def test_a_pinned_strategy_is_planned_or_refused_as_a_config_error(rec_profile) -> None:
    auto = plan(rec_profile, two_workers())
    assert pin_plan(ModelConfig(name="rec"), rec_profile, two_workers(), auto) is auto
    pinned = pin_plan(ModelConfig(name="rec", strategy=Strategy.RECSYS_SPLIT), rec_profile, two_workers(), auto)
    assert pinned.strategy == "recsys_split"
    refused = "model 'rec': strategy branch_parallel was pinned for recommender-demo but it is a recsys"
    with pytest.raises(ConfigError, match=refused):
        pin_plan(ModelConfig(name="rec", strategy=Strategy.BRANCH_PARALLEL), rec_profile, two_workers(), auto)


def test_served_plan_runs_recsys_splits_and_pipelines_and_refuses_pinned_splits_it_cannot_run(rec_profile) -> None:
    split = plan(rec_profile, two_workers(), PlanOptions(strategy="recsys_split"))
    assert served_plan(split, ModelConfig(name="rec", strategy=Strategy.RECSYS_SPLIT)) is split
    tight = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 30_000, 1e11, 2e10) for i in range(2)), 1.25e9)
    pipeline = plan(rec_profile, tight, PlanOptions(batch=1, strategy="pipeline"))
    assert served_plan(pipeline, ModelConfig(name="rec", strategy=Strategy.PIPELINE)) is pipeline
    assert served_plan(pipeline, ModelConfig(name="rec")) is pipeline  # chosen by the planner: run as planned
    branches = dataclasses.replace(split, strategy="branch_parallel")
    with pytest.raises(ConfigError, match="does not run branch_parallel plans of stateless models yet"):
        served_plan(branches, ModelConfig(name="rec", strategy=Strategy.REPLICAS))


async def test_the_plan_report_sets_measured_beside_predicted(rec_profile, split) -> None:
    tables, dense, replica, execute = split
    p = plan(rec_profile, two_workers(), PlanOptions(strategy="recsys_split"))
    clients = {"worker-0": tables, "worker-1": dense}
    ids, dense_in = TensorSpec("sparse_ids", "int64", (-1, 4)), TensorSpec("dense", "float32", (-1, 8))
    pooled = TensorSpec("pooled", "float32", (-1, WIDTH))
    loaded = {"sparse0": FragmentInfo("sparse0", 0, 0, 0, 24320, 0, 0, 0, "float32", STATELESS, (ids,), (pooled,)),
              "dense": FragmentInfo("dense", 0, 0, 0, 8772, 0, 0, 0, "float32", STATELESS, (pooled, dense_in), ())}
    report = PlanReport("rec", p, rec_profile, execute.meters, clients, loaded, two_workers())
    await execute(replica, batch(3), 30.0)  # a probe before measuring starts: not counted
    await report.begin(5.0)
    for seed in range(2):
        await execute(replica, batch(8, seed), 30.0)
    body = await report.to_dict()
    assert body["calibration"]["worker-0"]["measured_flops"] == pytest.approx(0.2e12)
    (link,) = body["links"]
    assert link["predicted_bytes_per_request"] == link["measured_payload_bytes_per_request"] == WIDTH * 4
    assert link["shipping_the_tables_bytes"] == 24320
    frags = {f["role"]: f for f in body["fragments"]}
    assert frags["sparse"]["measured"]["rows"] == 16 and frags["sparse"]["measured"]["step_s_at_planned_batch"] == \
        pytest.approx(0.008)
    assert frags["dense"]["predicted"]["input_bytes_per_request"] == (WIDTH + TinyRecommender.DENSE) * 4
    assert frags["sparse"]["predicted"]["input_bytes_per_request"] == len(CUT) * 8
    assert frags["sparse"]["measured"]["weight_bytes"] == 24320
    assert frags["dense"]["measured"]["sent_bytes_per_request"] == (WIDTH + TinyRecommender.DENSE) * 4


async def test_a_dead_tables_worker_fails_the_request_clearly_and_nothing_hangs(split) -> None:
    from genie.errors import Unavailable

    tables, dense, replica, execute = split

    async def dead(*_args, **_kw):
        raise Unavailable("worker-0 is not answering")

    tables.infer = dead
    down: list[str] = []
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, max_queue=32, bucket_edges=())
    service = StatelessService("rec", {"replica-0": replica}, policy, Metrics(), timeout=30.0, migration_limit=1,
                               on_replica_down=lambda name, reason: down.append(name), execute=execute)
    task = asyncio.create_task(service.run())
    try:
        inputs = batch(2)
        with pytest.raises(Unavailable, match="replica running this request failed|no replica"):
            await asyncio.wait_for(service.run_tensors([{k: v[i : i + 1] for k, v in inputs.items()}
                                                        for i in range(2)]), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert down == ["replica-0"] and not replica.alive and dense.calls == []
