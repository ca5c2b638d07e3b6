"""A pinned strategy (PlanOptions.strategy, from a model entry's `strategy:`): planned when it applies and fits,
refused with the reason otherwise. And the recsys split's link: only the pooled embeddings cross."""

from __future__ import annotations

import pytest
from semantic_builders import GiB
from semantic_zoo import ZOO

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.cluster import Measured, calibrated
from genie.semantic.planner import recost
from genie.serving.demo_models import tiny_recommender


def workers(n: int, memory: float = GiB, flops: float = 1e12) -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", int(memory), flops, 50e9) for i in range(n)), 10e9)


@pytest.fixture(scope="module")
def rec_profile():
    model, example = tiny_recommender()
    return analyze(model, example, name="rec")


@pytest.fixture(scope="module")
def clip_profile():
    model, inputs = ZOO["clip"][0]()
    return analyze(model, inputs, name="clip")


def pinned(strategy: str) -> PlanOptions:
    return PlanOptions(strategy=strategy)


def test_auto_replicates_a_recommender_that_fits_and_a_pin_splits_it(rec_profile) -> None:
    assert plan(rec_profile, workers(2)).strategy == "replicas"
    p = plan(rec_profile, workers(2), pinned("recsys_split"))
    assert p.strategy == "recsys_split"
    roles = {f.role: f for f in p.fragments}
    assert set(roles) == {"sparse", "dense"} and roles["sparse"].worker != roles["dense"].worker
    assert sorted(roles["sparse"].nodes) == [f"tables.{i}" for i in range(4)]
    assert not any(n.startswith("tables") for n in roles["dense"].nodes)


def test_the_split_link_is_the_pooled_embeddings_only(rec_profile) -> None:
    p = plan(rec_profile, workers(2), pinned("recsys_split"))
    (link,) = p.transfers  # no transfer towards the tables: they read only the request's ids
    assert (link.src, link.dst) == ("sparse0", "dense")
    assert link.bytes_per_request == 4 * 16 * 4  # 4 tables x 16 wide x float32
    tables = sum(b.param_bytes for b in rec_profile.blocks if b.kind == "sparse")
    assert any(f"{tables} B" in r for r in p.reasons)  # beside what shipping the tables would move


def test_tables_go_to_the_worker_that_is_not_the_dense_host(rec_profile) -> None:
    cluster = ClusterSpec((WorkerSpec("slow", "cpu", GiB, 1e11, 50e9), WorkerSpec("fast", "cpu", GiB, 1e13, 50e9)),
                          10e9)
    roles = {f.role: f.worker for f in plan(rec_profile, cluster, pinned("recsys_split")).fragments}
    assert roles == {"dense": "fast", "sparse": "slow"}


@pytest.mark.parametrize(("strategy", "cluster", "why"), [
    ("recsys_split", workers(1), "the cluster has one worker"),
    ("branch_parallel", workers(2), "branch_parallel needs a multimodal model"),
    ("disaggregated", workers(2), "applies to decoder-only LLMs"),
    ("pipeline", workers(2), "fits one worker, so a pipeline would be one stage"),
    ("replicas", workers(2, memory=10_000), "fits no worker"),
])
def test_a_pin_that_does_not_apply_or_fit_is_refused_with_the_reason(rec_profile, strategy, cluster, why) -> None:
    with pytest.raises(ValueError) as info:
        plan(rec_profile, cluster, pinned(strategy))
    assert f"strategy {strategy} was pinned for rec but" in str(info.value) and why in str(info.value)


def test_a_split_that_cannot_fit_is_refused(rec_profile) -> None:
    with pytest.raises(ValueError, match="recsys_split was pinned for rec but it does not fit"):
        plan(rec_profile, workers(2, memory=12_000), pinned("recsys_split"))


def test_pinned_branch_parallel_and_replicas_on_clip(clip_profile) -> None:
    assert plan(clip_profile, workers(2, 4 * GiB), pinned("branch_parallel")).strategy == "branch_parallel"
    assert plan(clip_profile, workers(2, 4 * GiB), pinned("replicas")).strategy == "replicas"
    with pytest.raises(ValueError, match="one worker"):
        plan(clip_profile, workers(1, 4 * GiB), pinned("branch_parallel"))


def test_pinned_llm_strategies_reach_the_llm_planner(smollm2_profile) -> None:
    two = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cuda", 8 * GiB, 50e12, 1e12) for i in range(2)), 25e9)
    assert plan(smollm2_profile, two, pinned("disaggregated")).strategy == "disaggregated"
    assert plan(smollm2_profile, two, pinned("replicas")).strategy == "replicas"
    with pytest.raises(ValueError, match="disaggregated was pinned"):
        plan(smollm2_profile, ClusterSpec(two.workers[:1], 25e9), pinned("disaggregated"))


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="PlanOptions.strategy must be one of auto, replicas"):
        PlanOptions(strategy="sharded")


def test_recosting_on_a_calibrated_cluster_uses_the_measured_speed(rec_profile) -> None:
    p = plan(rec_profile, workers(2), PlanOptions(batch=4096, strategy="recsys_split"))
    dense = next(f for f in p.fragments if f.role == "dense")
    nominal = recost.step_time(rec_profile, workers(2), dense, 4096)
    slower = calibrated(workers(2), {dense.worker: Measured(1e10, 5e8)})
    assert slower.worker("w0" if dense.worker == "w1" else "w1").flops == 1e12  # others keep the nominal
    assert recost.step_time(rec_profile, slower, dense, 4096) > 10 * nominal
    assert recost.input_bytes(rec_profile) == 4 * 8 + 8 * 4  # sparse_ids int64 [4] + dense float32 [8]
