"""The cold-call probe a worker runs at start-up (workers/device.py): what it measures, how the analyser counts its
stack, and how the figure travels through Info into the calibrated cost model."""

from __future__ import annotations

import pytest
import torch

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.cluster import Measured, calibrated
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner import recost
from genie.serving.demo_models import tiny_recommender
from genie.workers import codec
from genie.workers import device as dev

PROBE_LAYER_OPS, PROBE_LAYER_MODULES = 17, 7  # what ProbeLayer's docstring promises, as the analyser counts


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("depth", [1, 3])
def test_the_probe_stack_is_counted_as_fragments_are(depth: int) -> None:
    profile = analyze(dev.ProbeStack(depth).eval(), {"x": torch.randn(1, dev.PROBE_TOKENS, dev.PROBE_WIDTH)}, "probe")
    assert sum(b.ops for b in profile.blocks) == depth * PROBE_LAYER_OPS
    assert sum(b.modules for b in profile.blocks) == 2 + depth * PROBE_LAYER_MODULES  # the stack and its list


def test_the_call_probe_pauses_before_each_timed_run(monkeypatch, one_thread) -> None:
    pauses: list[float] = []
    real_sleep = dev.time.sleep
    monkeypatch.setattr(dev.time, "sleep", lambda s: (pauses.append(s), real_sleep(s)))
    call_us = dev.measure_call_us(torch.device("cpu"), torch.float32)
    assert pauses == [dev.GAP_S] * dev.CALL_RUNS
    assert 0.0 <= call_us < 1e5


def test_a_call_that_costs_more_after_a_pause_is_measured_as_a_call_cost(monkeypatch) -> None:
    """The probe's arithmetic, on a stand-in clock: 30 us back to back, 130 us after a pause -> 100 us a call."""
    clock = {"t": 0.0, "phase": ""}

    def sleep(_s: float) -> None:
        clock["phase"] = "start"

    def perf_counter() -> float:
        if clock["phase"] == "start":  # the timed run after a pause begins
            clock["phase"] = "end"
        elif clock["phase"] == "end":  # ... and ends 130 us later on the stand-in clock
            clock["phase"] = ""
            clock["t"] += 130e-6
        return clock["t"]

    monkeypatch.setattr(dev, "_best_time", lambda _op, _device: 30e-6)
    monkeypatch.setattr(dev.time, "sleep", sleep)
    monkeypatch.setattr(dev.time, "perf_counter", perf_counter)
    assert dev.measure_call_us(torch.device("cpu"), torch.float32) == pytest.approx(100.0)


def test_probe_device_reports_the_call_figure(one_thread) -> None:
    facts = dev.probe_device(torch.device("cpu"), torch.float32)
    assert facts.call_us >= 0.0 and facts.op_us > 0 and facts.module_us > 0


def test_info_carries_the_call_figure() -> None:
    info = codec.WorkerInfo("cpu", "EPYC", 1 << 34, 1 << 33, 40.5, 0.2, ("llm.decoder",), ("a",), "0.1.0",
                            op_us=3.0, module_us=1.0, call_us=150.0)
    msg = codec.worker_info_to_pb(info)
    assert msg.measured_call_us == 150.0
    assert codec.worker_info_from_pb(msg) == info


def _cluster() -> ClusterSpec:
    return ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 1 << 30, 1e11, 2e10) for i in range(2)), 1e9)


def test_a_fragment_pays_the_call_once_whatever_its_batch_and_blocks() -> None:
    model, example = tiny_recommender()
    profile = analyze(model, example, name="rec")
    p = plan(profile, _cluster(), PlanOptions(strategy="recsys_split"))
    probed = calibrated(_cluster(), {w: Measured(5e10, 1e10, 3e-6, 1e-6, 150e-6) for w in ("w0", "w1")})
    assert probed.worker("w0").call_s == 150e-6
    for f in p.fragments:
        blocks = recost.blocks_of(profile, f)
        w = probed.worker(f.worker)
        for batch in (1, 8, 64):
            parts = recost.step_parts(profile, probed, f, batch)
            assert parts["call_s"] == 150e-6
            assert recost.step_time(profile, probed, f, batch) == pytest.approx(sum(parts.values()))
            assert bc.time(blocks, w, batch) - bc.roofline(blocks, w, batch) - bc.dispatch(blocks, w) == \
                pytest.approx(150e-6)


def test_replanning_scales_the_call_figure_with_the_rest() -> None:
    probed = calibrated(_cluster(), {"w0": Measured(5e10, 1e10, 3e-6, 1e-6, 150e-6)})
    slow = recost.corrected(probed, {"w0": 2.0})
    assert slow.worker("w0").call_s == pytest.approx(300e-6)
    assert slow.worker("w1").call_s == 0.0


def test_a_negative_call_figure_is_refused_with_its_field() -> None:
    with pytest.raises(ValueError, match="call_s must be a positive number"):
        WorkerSpec("w", "cpu", 1 << 30, 1e11, 1e10, call_s=-1e-6)


def _hold_the_probe_lock(tmp_path, monkeypatch):
    import fcntl
    import os

    monkeypatch.setattr(dev.tempfile, "gettempdir", lambda: str(tmp_path))
    fd = os.open(tmp_path / dev.PROBE_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_workers_on_one_host_take_turns_to_probe(tmp_path, monkeypatch) -> None:
    import os
    import threading

    fd = _hold_the_probe_lock(tmp_path, monkeypatch)  # another worker is probing
    events: list[str] = []

    def other_worker_finishes() -> None:
        events.append("released")
        os.close(fd)

    timer = threading.Timer(0.2, other_worker_finishes)
    timer.start()
    with dev._probe_turn(wait_s=30.0):
        events.append("probing")
    timer.join()
    assert events == ["released", "probing"]


def test_a_turn_that_never_comes_does_not_stop_the_worker(tmp_path, monkeypatch) -> None:
    import os

    fd = _hold_the_probe_lock(tmp_path, monkeypatch)
    try:
        with dev._probe_turn(wait_s=0.05):
            entered = True
    finally:
        os.close(fd)
    assert entered
