"""Re-costing a served plan on what serving measured (recost.replan): a forced misprediction is found, the
mispredicted worker's speed corrected, and another strategy that then wins clearly is named."""

from __future__ import annotations

import pytest
from semantic_zoo import ZOO

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.planner import recost

OPTIONS = PlanOptions()


def cluster() -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 1 << 30, 9e10, 1.8e10, 3e-6, 1e-6) for i in range(2)),
                       1.25e9)


@pytest.fixture(scope="module")
def clip():
    model, inputs = ZOO["clip"][0]()
    profile = analyze(model, inputs, name="clip")
    return profile, plan(profile, cluster(), PlanOptions(strategy="branch_parallel"))


def measured_as(profile, p, slow: dict[str, float]) -> dict[str, tuple[int, float]]:
    """What serving would measure if each worker ran `slow[worker]` times slower than predicted."""
    return {f.fragment_id: (8, recost.step_time(profile, cluster(), f, 8) * slow.get(f.worker, 1.0))
            for f in p.fragments}


def test_predictions_that_hold_keep_the_plan(clip) -> None:
    profile, p = clip
    verdict = recost.replan(profile, cluster(), p, measured_as(profile, p, {}), OPTIONS)
    assert verdict.mismatch == pytest.approx({w: 1.0 for w in {f.worker for f in p.fragments}})
    assert not verdict.mispredicted and verdict.better is None
    assert verdict.current == "branch_parallel" and set(verdict.candidates) >= {"replicas", "branch_parallel"}
    assert "recsys_split" in verdict.refused


def test_a_worker_far_slower_than_predicted_makes_replicas_win(clip) -> None:
    profile, p = clip
    image = next(f for f in p.fragments if f.fragment_id == "branch:image").worker
    verdict = recost.replan(profile, cluster(), p, measured_as(profile, p, {image: 6.0}), OPTIONS)
    assert verdict.mismatch[image] == pytest.approx(6.0) and verdict.mispredicted
    assert verdict.better == "replicas"
    assert verdict.candidates["replicas"] > (1 + recost.CLEAR_WIN) * verdict.candidates["branch_parallel"]
    # the corrected cluster is the measured one: the running plan re-costed on it predicts what was measured
    fixed = recost.corrected(cluster(), verdict.mismatch)
    frag = next(f for f in p.fragments if f.fragment_id == "branch:image")
    assert recost.step_time(profile, fixed, frag, 8) == pytest.approx(6 * recost.step_time(profile, cluster(), frag, 8),
                                                                       rel=0.02)
