"""The plan report's meters (median and fastest step per batch) and its re-costing: a forced misprediction (a
worker described far faster than it runs) is logged once and reported in GET /v1/genie/plans' `replan`."""

from __future__ import annotations

import logging

import pytest
import torch

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.planner import recost
from genie.serving.demo_models import tiny_clip
from genie.serving.plans import PLANNED, PlanReport
from genie.serving.stateless.meters import Meters


def cluster(flops: float = 9e10) -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"worker-{i}", "cpu", 1 << 30, flops, 1.8e10, 3e-6, 1e-6)
                             for i in range(2)), 1.25e9)


@pytest.fixture(scope="module")
def clip():
    model, example = tiny_clip()
    profile = analyze(model, example, name="clip")
    return profile, plan(profile, cluster(), PlanOptions(strategy="branch_parallel"))


def test_meters_keep_a_median_and_the_fastest_call_per_batch() -> None:
    meters = Meters()
    m = meters.of("f", "w")
    x = {"x": torch.zeros(8, 4)}
    for seconds in (0.010, 0.002, 0.003, 0.050):
        m.record(8, seconds, x, x)
    m.record(3, 0.001, x, x)
    assert m.step_s(8) == pytest.approx(0.01625) and m.median_step_s(8) == pytest.approx(0.0065)
    assert m.fastest_step_s(8) == 0.002 and m.fastest_step_s(5) is None and m.median_step_s(3) == 0.001


def report_with(profile, p, slow: dict[str, float]) -> PlanReport:
    """A report whose meters saw each worker run slow[worker] times slower than the plan's cluster says."""
    report = PlanReport("clip", p, profile, Meters(), {}, {}, cluster())
    x = {"x": torch.zeros(PLANNED.batch, 1)}
    for f in p.fragments:
        seconds = recost.step_time(profile, cluster(), f, PLANNED.batch) * slow.get(f.worker, 1.0)
        for _ in range(3):
            report.meters.of(f.fragment_id, f.worker).record(PLANNED.batch, seconds, x, x)
    return report


def test_no_report_until_every_fragment_has_run(clip) -> None:
    profile, p = clip
    assert PlanReport("clip", p, profile, Meters(), {}, {}, cluster()).replan() is None


def test_a_forced_misprediction_is_recosted_logged_once_and_reported(clip, caplog) -> None:
    profile, p = clip
    image = next(f.worker for f in p.fragments if f.fragment_id == "branch:image")
    report = report_with(profile, p, {image: 8.0})
    with caplog.at_level(logging.WARNING, logger="genie.serve"):
        first, second = report.replan(), report.replan()
    assert first == second and first["mispredicted"] and first["better_strategy"] == "replicas"
    assert first["mismatch"][image] == pytest.approx(8.0) and first["applied"] is False
    lines = [r.getMessage() for r in caplog.records if "re-costed" in r.getMessage()]
    assert len(lines) == 1 and "replicas promises" in lines[0] and "reported, not applied" in lines[0]


def test_predictions_that_hold_name_no_other_strategy(clip, caplog) -> None:
    profile, p = clip
    with caplog.at_level(logging.WARNING, logger="genie.serve"):
        verdict = report_with(profile, p, {}).replan()
    assert not verdict["mispredicted"] and verdict["better_strategy"] is None
    assert not [r for r in caplog.records if "re-costed" in r.getMessage()]


def test_meters_keep_the_callers_view_of_each_call_beside_the_workers() -> None:
    m = Meters().of("f", "w")
    x = {"x": torch.zeros(8, 4)}
    m.record(8, 0.001, x, x, call_s=0.004)
    m.record(8, 0.001, x, x, call_s=0.002)
    m.record(8, 0.001, x, x)  # an executor that does not time its calls adds nothing to the caller's view
    assert m.median_call_s(8) == pytest.approx(0.003) and m.median_call_s(4) is None
    assert m.to_dict()["mean_call_s"] == pytest.approx(0.002)
    assert Meters().of("g", "w").to_dict()["mean_call_s"] is None
