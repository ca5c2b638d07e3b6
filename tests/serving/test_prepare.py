"""Several models on shared workers: fragment ids of their own, and their memory on a worker checked together."""

from __future__ import annotations

import pytest

from genie.errors import InvalidRequest
from genie.semantic.planner.types import Plan, PlanFragment, Prediction, Transfer
from genie.serving.prepare import Prepared, check_memory, namespaced

MIB = 2**20


def plan(model: str, per_worker: dict[str, int]) -> Plan:
    fragments = [PlanFragment(f"r{i}", worker, i, 0, None, None, True, True, [], "test", memory_bytes=mib * MIB)
                 for i, (worker, mib) in enumerate(per_worker.items())]
    transfers = [Transfer("r0", "r1", "nothing", 0, 0, "test")] if len(fragments) > 1 else []
    return Plan(model, "replicas", fragments, transfers, Prediction(0.001, 1.0, "requests/s"), [])


class _Model:
    def __init__(self, name: str) -> None:
        self.name = name


def prepared(name: str, per_worker: dict[str, int]) -> Prepared:
    return Prepared(_Model(name), None, None, plan(name, per_worker))  # type: ignore[arg-type]


def test_namespaced_fragment_ids_are_the_models_own() -> None:
    out = namespaced(plan("minilm", {"worker-0": 10, "worker-1": 10}), "minilm")
    assert [f.fragment_id for f in out.fragments] == ["minilm.r0", "minilm.r1"]
    assert (out.transfers[0].src, out.transfers[0].dst) == ("minilm.r0", "minilm.r1")
    assert [f.worker for f in out.fragments] == ["worker-0", "worker-1"]


def test_models_that_fit_a_worker_together_pass() -> None:
    check_memory([prepared("a", {"worker-0": 300}), prepared("b", {"worker-0": 200})], {"worker-0": 512 * MIB})


def test_models_that_do_not_fit_together_are_refused_with_the_numbers() -> None:
    with pytest.raises(InvalidRequest) as err:
        check_memory([prepared("a", {"worker-0": 300, "worker-1": 10}), prepared("b", {"worker-0": 300})],
                     {"worker-0": 512 * MIB, "worker-1": 512 * MIB})
    message = str(err.value)
    assert "worker-0" in message and "a 300 MiB, b 300 MiB = 600 MiB" in message and "512 MiB" in message
    assert "worker-1" not in message
