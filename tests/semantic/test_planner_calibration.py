"""The cost model's calibration: blocks count their ops, module calls and activation traffic; a worker's
dispatch probes (workers/device.py) price them; calibration reads the probes only."""

from __future__ import annotations


import pytest
import torch

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.capture import capture, op_nodes
from genie.semantic.cluster import Measured, calibrated
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner import recost
from genie.serving.demo_models import tiny_recommender
from genie.workers.device import measure_module_us, measure_op_us, probe_device


def cluster(op_s: float = 0.0, module_s: float = 0.0) -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 1 << 30, 1e11, 2e10, op_s, module_s) for i in range(2)),
                       1e9)


@pytest.fixture(scope="module")
def rec():
    model, example = tiny_recommender()
    return model, example, analyze(model, example, name="rec")


def test_blocks_count_the_ops_and_module_calls_a_forward_makes(rec) -> None:
    model, example, profile = rec
    assert sum(b.ops for b in profile.blocks) == len(op_nodes(capture(model, example)))  # every traced op once
    assert all(b.ops >= 1 for b in profile.blocks)
    leaf_calls = sum(1 for m in model.modules() if not list(m.children()))
    assert leaf_calls <= sum(b.modules for b in profile.blocks) <= len(list(model.modules()))
    assert all(b.traffic_bytes >= b.output_bytes for b in profile.blocks if b.ops)


def test_dispatch_is_priced_per_op_and_call_whatever_the_batch(rec) -> None:
    _, _, profile = rec
    blocks = profile.blocks
    w = cluster(3e-6, 1e-6).workers[0]
    ops = sum(b.ops for b in blocks) + bc.GUARD_OPS * sum(b.lookups for b in blocks)
    assert sum(b.lookups for b in blocks) == 4  # the recommender's four tables
    expected = 3e-6 * ops + 1e-6 * sum(b.modules for b in blocks)
    assert bc.dispatch(blocks, w) == pytest.approx(expected)
    assert bc.time(blocks, w, 1) - bc.roofline(blocks, w, 1) == pytest.approx(expected)
    assert bc.time(blocks, w, 64) - bc.roofline(blocks, w, 64) == pytest.approx(expected)
    # weights are read once a step; arithmetic and activation traffic grow with the batch
    per_row = sum(b.flops for b in blocks) / w.flops + sum(b.traffic_bytes for b in blocks) / w.bandwidth
    assert bc.roofline(blocks, w, 64) - bc.roofline(blocks, w, 1) == pytest.approx(63 * per_row)
    assert per_row > 0


def test_calibration_takes_every_probe_and_leaves_other_workers_nominal(rec) -> None:
    _, _, profile = rec
    p = plan(profile, cluster(), PlanOptions(strategy="recsys_split"))
    dense = next(f for f in p.fragments if f.role == "dense")
    probed = calibrated(cluster(), {dense.worker: Measured(5e10, 1e10, 4e-6, 1e-6)})
    w = probed.worker(dense.worker)
    assert (w.flops, w.bandwidth, w.op_s, w.module_s) == (5e10, 1e10, 4e-6, 1e-6)
    other = next(x for x in probed.workers if x.name != dense.worker)
    assert (other.flops, other.op_s) == (1e11, 0.0)
    nominal = recost.step_time(profile, cluster(), dense, 8)
    assert recost.step_time(profile, probed, dense, 8) > nominal + 4e-6 * len(dense.nodes)


def test_a_negative_dispatch_figure_is_refused_with_its_field() -> None:
    with pytest.raises(ValueError, match="op_s must be a positive number"):
        WorkerSpec("w", "cpu", 1 << 30, 1e11, 1e10, op_s=-1.0)


@pytest.fixture
def one_thread():
    """The probes as a one-thread worker runs them (with more intra-op threads than free CPUs, OpenMP's waits
    can cost milliseconds an op); the test process's own setting is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_worker_probes_measure_dispatch_in_microseconds(one_thread) -> None:
    op_us, module_us = measure_op_us(torch.device("cpu"), torch.float32), measure_module_us(torch.device("cpu"))
    assert 0.05 < op_us < 500 and 0.01 < module_us < 500


def test_probe_device_reports_the_dispatch_figures(one_thread) -> None:
    facts = probe_device(torch.device("cpu"), torch.float32)
    assert facts.op_us > 0 and facts.module_us > 0 and facts.tflops > 0 and facts.bandwidth_gbps > 0
