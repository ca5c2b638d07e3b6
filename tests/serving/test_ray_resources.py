"""What a plan asks of Ray, without Ray: actor resources, placement groups, the cluster spec Ray feeds."""

from __future__ import annotations

import pytest

from genie.config import parse_config
from genie.registry import ray_capacity
from genie.registry.cluster import cluster_from_config
from genie.registry.ray_capacity import GiB, NodeCapacity
from genie.semantic import Plan, PlanFragment
from genie.semantic.planner.types import Prediction
from genie.serving.ray_launcher import ActorResources, actor_resources, placement_groups


def _cfg(**workers):
    return parse_config({"model": {"name": "m"}, "workers": {"launcher": "ray", **workers}})


def _frag(fid: str, worker: str, replica: int, stage: int = 0, memory: int = GiB) -> PlanFragment:
    return PlanFragment(fid, worker, replica, stage, 0, 1, stage == 0, True, [], "test", memory_bytes=memory)


def _plan(strategy: str, *frags: PlanFragment) -> Plan:
    return Plan("m", strategy, list(frags), [], Prediction(1.0, 1.0, "tokens/s", {}), [])


def test_an_actor_asks_for_its_threads_a_gpu_on_cuda_and_the_plans_memory() -> None:
    frags = [_frag("a", "worker-0", 0, memory=3 * GiB), _frag("b", "worker-0", 1, memory=GiB)]
    cpu = actor_resources(_cfg(threads=4, ray_resources={"genie_worker": 1}), frags, "cpu")
    assert cpu == ActorResources(4.0, 0.0, 4 * GiB, (("genie_worker", 1.0),))
    assert cpu.bundle() == {"CPU": 4.0, "memory": float(4 * GiB), "genie_worker": 1.0}  # no GPU: 0 is left out
    assert cpu.options() == {"num_cpus": 4.0, "num_gpus": 0.0, "memory": 4 * GiB, "resources": {"genie_worker": 1.0}}
    gpu = actor_resources(_cfg(), frags[:1], "cuda")
    assert (gpu.num_cpus, gpu.num_gpus, gpu.memory) == (1.0, 1.0, 3 * GiB)


def test_a_pipeline_replica_is_packed_together_and_replicas_apart() -> None:
    pipeline = _plan("pipeline", _frag("s0", "worker-0", 0, 0), _frag("s1", "worker-1", 0, 1),
                     _frag("t0", "worker-2", 1, 0), _frag("t1", "worker-3", 1, 1))
    groups = placement_groups([pipeline])
    assert [(g.workers, g.strategy) for g in groups] == [(("worker-0", "worker-1"), "PACK"),
                                                         (("worker-2", "worker-3"), "PACK")]


def test_branch_parallel_spreads_and_a_worker_shared_by_two_models_joins_their_groups() -> None:
    branches = _plan("branch_parallel", _frag("vision", "worker-0", 0, 0), _frag("text", "worker-1", 0, 1))
    assert [(g.workers, g.strategy) for g in placement_groups([branches])] == [(("worker-0", "worker-1"), "SPREAD")]
    llm = _plan("replicas", _frag("r0", "worker-1", 0), _frag("r1", "worker-2", 1))
    groups = placement_groups([llm, _plan("single", _frag("e", "worker-2", 0))])
    assert [(g.workers, g.strategy) for g in groups] == [(("worker-1",), "PACK"), (("worker-2",), "PACK")]
    joined = placement_groups([branches, llm])  # worker-1 holds a branch and an LLM replica
    assert [(g.workers, g.strategy) for g in joined] == [(("worker-0", "worker-1"), "SPREAD"), (("worker-2",), "PACK")]


def test_worker_memory_shares_the_cluster_in_whole_gib_within_one_node() -> None:
    nodes = [NodeCapacity("a", "10.0.0.1", 8, 0, 40 * GiB + 123), NodeCapacity("b", "10.0.0.2", 8, 0, 10 * GiB)]
    assert ray_capacity.worker_memory(nodes, 2) == 25 * GiB  # 50 GiB / 2, rounded down
    assert ray_capacity.worker_memory(nodes, 1) == 40 * GiB  # one actor cannot span nodes
    assert ray_capacity.worker_memory(nodes[1:], 64) == GiB  # never below 1 GiB


@pytest.fixture
def fake_ray(monkeypatch):
    cluster: list[NodeCapacity] = []
    monkeypatch.setattr(ray_capacity, "connect", lambda address, namespace=None: False)
    monkeypatch.setattr(ray_capacity, "nodes", lambda: list(cluster))
    return cluster


def test_the_cluster_spec_comes_from_rays_nodes(fake_ray) -> None:
    fake_ray += [NodeCapacity("a", "10.0.0.1", 16, 0, 64 * GiB), NodeCapacity("b", "10.0.0.2", 16, 0, 64 * GiB)]
    spec = cluster_from_config(_cfg(launch=4))
    assert [(w.name, w.device, w.memory_bytes) for w in spec.workers] == [
        (f"worker-{i}", "cpu", 32 * GiB) for i in range(4)]
    assert cluster_from_config(_cfg(launch=4, memory_mib=1024)).workers[0].memory_bytes == GiB
    fake_ray[0] = NodeCapacity("a", "10.0.0.1", 16, 0, 64 * GiB + 5 * 2**20)  # Ray's memory moved a little
    assert cluster_from_config(_cfg(launch=4)).fingerprint() == spec.fingerprint()  # the cached plan still fits


def test_device_auto_is_cuda_when_the_ray_cluster_has_gpus(fake_ray) -> None:
    fake_ray.append(NodeCapacity("g", "10.0.0.3", 8, 2, 64 * GiB))
    spec = cluster_from_config(_cfg(launch=2, memory_mib=16384))
    assert {w.device for w in spec.workers} == {"cuda"}


def test_without_the_ray_package_the_launcher_says_how_to_install_it(monkeypatch) -> None:
    import sys

    from genie.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'genie-serve\[ray\]'"):
        cluster_from_config(_cfg(launch=2))


@pytest.mark.parametrize(("workers", "says"), [
    ({"launcher": "ray", "ray_namespace": "prod"}, "no link_token_file"),
    ({"launcher": "ray", "ray_namespace": "prod", "link_token_file": "/t", "ray_address": "local"},
     "head stops with genie-serve"),
    ({"ray_namespace": "prod"}, "applies to launcher ray only"),
    ({"launcher": "ray", "ray_namespace": "two words", "link_token_file": "/t"}, "ray_namespace"),
])
def test_actors_that_outlive_genie_serve_need_a_fixed_link_token_and_a_cluster_of_their_own(workers, says) -> None:
    from genie.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        parse_config({"model": {"name": "m"}, "workers": workers})
    ok = parse_config({"model": {"name": "m"}, "workers": {"launcher": "ray", "ray_namespace": "prod",
                                                           "link_token_file": "/t"}})
    assert ok.workers.ray_namespace == "prod"
