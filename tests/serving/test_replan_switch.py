"""The parts of serving.replan: auto without processes: StatelessService.switch (new batches to the new replicas,
running ones finish on the old, a batch failing on the old runs again on the new), the generation labels of a
new plan, the Replanner's refusals (no executor, a worker not started, a strategy it left) and the config."""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch

from genie.config import parse_config
from genie.errors import ConfigError, Unavailable
from genie.semantic import Plan, PlanFragment, Prediction, Transfer
from genie.semantic.planner.recost import Replan
from genie.serving.metrics import Metrics
from genie.serving.plans import PlanReport
from genie.serving.replica import Replica, Stage
from genie.serving.stateless.batcher import BatchPolicy
from genie.serving.stateless.meters import Meters
from genie.serving.stateless.replan import Replanner, relabel
from genie.serving.stateless.service import StatelessService
from genie.serving.stateless.split import WholeModel

GUARD_S = 5.0  # a bound on waits that should end at once


class Worker:
    """One fragment's Infer: y = x * factor, held at a gate when given one, failing once when told to."""

    def __init__(self, factor: float, gate: asyncio.Event | None = None, fail: bool = False) -> None:
        self.factor, self.gate, self.fail = factor, gate, fail
        self.calls = 0
        self.arrived = asyncio.Event()

    async def infer(self, fragment_id: str, inputs, timeout=None):
        self.calls += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise Unavailable("the old worker went away")
        return {"y": inputs["x"] * self.factor}


def replicas(prefix: str, *workers: Worker) -> dict[str, Replica]:
    return {f"{prefix}{i}": Replica(f"{prefix}{i}", [Stage(f"w{i}", w, "frag")], 0, warm=True)
            for i, w in enumerate(workers)}


def service(old: Worker) -> StatelessService:
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0, max_queue=16, bucket_edges=())
    return StatelessService("m", replicas("old-", old), policy, Metrics(), 30.0, 2, execute=WholeModel())


async def ask(svc: StatelessService, x: float) -> float:
    [out] = await asyncio.wait_for(svc.run_tensors([{"x": torch.tensor([[x]])}]), GUARD_S)
    return float(out["y"])


async def test_new_batches_go_to_the_new_replicas_while_the_running_one_finishes_on_the_old() -> None:
    gate = asyncio.Event()
    old, new = Worker(2.0, gate), Worker(2.0)
    svc = service(old)
    task = asyncio.create_task(svc.run())
    try:
        first = asyncio.create_task(ask(svc, 1.0))
        await asyncio.wait_for(old.arrived.wait(), GUARD_S)
        old_execute, new_execute = svc.execute, WholeModel()
        running = svc.switch(replicas("new-", new), new_execute)
        assert len(running) == 1 and svc.execute is new_execute
        assert await ask(svc, 3.0) == 6.0 and new.calls == 1  # the old replica is still busy: not waited for
        gate.set()
        assert await first == 2.0 and old.calls == 1
        await asyncio.wait_for(asyncio.gather(*running), GUARD_S)
        assert old_execute.meters["frag"].calls == 1 and new_execute.meters["frag"].calls == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batch_failing_on_the_old_replica_after_the_switch_runs_on_the_new() -> None:
    gate = asyncio.Event()
    old, new = Worker(2.0, gate, fail=True), Worker(2.0)
    svc = service(old)
    task = asyncio.create_task(svc.run())
    try:
        first = asyncio.create_task(ask(svc, 5.0))
        await asyncio.wait_for(old.arrived.wait(), GUARD_S)
        svc.switch(replicas("new-", new), WholeModel())
        gate.set()
        assert await first == 10.0 and (old.calls, new.calls) == (1, 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_new_replicas_need_names_of_their_own() -> None:
    svc = service(Worker(1.0))
    with pytest.raises(ValueError, match="old-0"):
        svc.switch(replicas("old-", Worker(1.0)), WholeModel())


def fragment(fid: str, worker: str, replica: int, stage: int = 0, role: str = "all") -> PlanFragment:
    return PlanFragment(fid, worker, replica, stage, None, None, stage == 0, True, [f"{fid}.block"], "test", role)


def make_plan(strategy: str, fragments: list[PlanFragment], transfers: list[Transfer] | None = None) -> Plan:
    return Plan("m", strategy, fragments, transfers or [], Prediction(0.01, 100.0, "requests/s"), ["test"])


def test_a_new_generation_has_its_own_fragment_ids_and_replica_numbers() -> None:
    plan = make_plan("branch_parallel", [fragment("m.img", "worker-0", 0, 0, "branch:image"),
                                         fragment("m.fuse", "worker-0", 0, 1, "fusion")],
                     [Transfer("m.img", "m.fuse", "image embedding", 0, 64, "test")])
    got = relabel(plan, 2, 3)
    assert [(f.fragment_id, f.replica, f.role) for f in got.fragments] == [
        ("m.img@g2", 3, "branch:image"), ("m.fuse@g2", 3, "fusion")]
    assert (got.transfers[0].src, got.transfers[0].dst) == ("m.img@g2", "m.fuse@g2")


class Report:
    """The plan report as the Replanner reads it: the running plan and a verdict."""

    def __init__(self, plan: Plan, verdict: Replan | None) -> None:
        self.plan, self._verdict, self.switches = plan, verdict, []

    def verdict(self, min_calls: int = 1) -> Replan | None:
        return self._verdict


class Pool:
    def __init__(self, *names: str) -> None:
        self.clients = dict.fromkeys(names)


class Service:
    restarting: set[str] = set()
    accepting = True


def replanner(verdict: Replan | None, *workers: str) -> Replanner:
    running = make_plan("branch_parallel", [fragment("m.img", "worker-0", 0)])
    return Replanner("m", Pool(*workers), None, Service(), None, Report(running, verdict), (), None, 1.0, 1.0, 1.0)


def verdict_for(strategy: str, plan: Plan, mispredicted: bool = True) -> Replan:
    ratio = 3.0 if mispredicted else 1.1
    return Replan({"worker-0": ratio}, {strategy: 900.0, "branch_parallel": 100.0}, {}, "branch_parallel",
                  strategy, {strategy: plan})


async def test_a_strategy_genie_serve_cannot_run_is_refused_once_and_logged(caplog) -> None:
    split_llm = make_plan("disaggregated", [fragment("m.p", "worker-0", 0, 0, "prefill"),
                                            fragment("m.d", "worker-1", 0, 1, "decode")])
    r = replanner(verdict_for("disaggregated", split_llm), "worker-0", "worker-1")
    with caplog.at_level(logging.WARNING, logger="genie.serve"):
        assert await r.check() is False and await r.check() is False
    assert "no executor for disaggregated" in r.refused["disaggregated"]
    assert len([m for m in caplog.messages if "not applied" in m]) == 1


async def test_a_plan_on_a_worker_not_started_is_refused() -> None:
    far = make_plan("replicas", [fragment("m.r0", "worker-0", 0), fragment("m.r1", "worker-9", 1)])
    r = replanner(verdict_for("replicas", far), "worker-0")
    assert await r.check() is False and "worker-9" in r.refused["replicas"]


async def test_no_switch_back_to_a_strategy_left_nor_without_a_misprediction() -> None:
    whole = make_plan("replicas", [fragment("m.r0", "worker-0", 0)])
    r = replanner(verdict_for("replicas", whole), "worker-0")
    r.left.add("replicas")
    assert await r.check() is False and not r.refused
    calm = replanner(verdict_for("replicas", whole, mispredicted=False), "worker-0")
    assert await calm.check() is False and not calm.refused
    assert await replanner(None, "worker-0").check() is False  # not measured enough yet


def test_replan_off_reports_no_recosting() -> None:
    plan = make_plan("replicas", [fragment("m.r0", "worker-0", 0)])
    report = PlanReport("m", plan, None, Meters(), {}, {}, None, mode="off")
    assert report.replan() == {"mode": "off", "applied": False, "switches": [],
                               "note": "serving.replan is off: the plan is not re-costed"}


@pytest.mark.parametrize(("key", "value", "said"), [
    ("replan", "sometimes", "serving.replan: Input should be 'off', 'report' or 'auto', got 'sometimes'"),
    ("replan_interval_s", 0, "serving.replan_interval_s must be > 0"),
])
def test_bad_replan_settings_are_refused_by_name(key, value, said) -> None:
    with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
        parse_config({"model": {"name": "m"}, "serving": {key: value}})


def test_replan_defaults_to_report() -> None:
    serving = parse_config({"model": {"name": "m"}}).serving
    assert (serving.replan, serving.replan_interval_s) == ("report", 5.0)


class RefusingWorker:
    """A worker that refuses to load (no room, say) and counts what it is asked to unload."""

    def __init__(self) -> None:
        self.unloaded: list[str] = []

    async def load_fragment(self, spec, timeout=None, reuse=False):
        raise Unavailable("not enough memory for the fragment")

    async def unload_fragment(self, fragment_id, timeout=None):
        self.unloaded.append(fragment_id)


async def test_a_plan_whose_fragments_fail_to_load_leaves_the_running_plan_serving() -> None:
    from genie.workers.contract import STATELESS, FragmentSpec

    whole = make_plan("replicas", [fragment("m.r0", "worker-0", 0)])
    r = replanner(verdict_for("replicas", whole), "worker-0")
    worker = RefusingWorker()
    r.pool.clients["worker-0"] = worker
    r.base = FragmentSpec(fragment_id="", model_dir="/nowhere", kind=STATELESS)
    running = r.report.plan
    assert await r.check() is False and await r.check() is False
    assert "bringing its fragments up failed" in r.refused["replicas"] and "not enough memory" in r.refused["replicas"]
    assert worker.unloaded == ["m.r0@g1"]  # what it may have half-loaded is freed, once
    assert r.report.plan is running and not r.report.switches and r.generation == 0
