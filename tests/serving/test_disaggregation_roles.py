"""serving.disaggregation read against the plan: which replicas prefill and which decode, the plan the router
serves for it, the KV bytes a handoff should move, and the config's refusals."""

from __future__ import annotations

import pytest

from genie.config import parse_config
from genie.errors import ConfigError
from genie.semantic.planner.types import Plan, PlanFragment, Prediction
from genie.serving.disaggregation import kv_bytes_per_token, serving_roles
from genie.serving.launcher import check_servable


def frag(fid: str, worker: str, replica: int, stage: int = 0, role: str = "all", layers=(0, 30)) -> PlanFragment:
    return PlanFragment(fid, worker, replica, stage, layers[0], layers[1], stage == 0, True, [], "test", role)


def plan(strategy: str, fragments: list[PlanFragment]) -> Plan:
    return Plan("m", strategy, fragments, [], Prediction(1.0, 1.0, "tokens/s"), [])


def test_a_disaggregated_plan_becomes_two_replicas_with_roles_under_auto_and_on() -> None:
    split = plan("disaggregated", [frag("prefill0", "worker-0", 0, 0, "prefill"),
                                   frag("decode0", "worker-1", 0, 1, "decode")])
    for mode in ("auto", "on"):
        served, roles = serving_roles(split, mode)
        assert roles == {"replica-0": "prefill", "replica-1": "decode"}
        assert [(f.fragment_id, f.replica, f.stage, f.role) for f in served.fragments] == [
            ("prefill0", 0, 0, "all"), ("decode0", 1, 0, "all")]
        check_servable(served)  # the router can run it: two whole-model replicas


def test_off_serves_a_disaggregated_plan_as_plain_replicas() -> None:
    split = plan("disaggregated", [frag("prefill0", "worker-0", 0, 0, "prefill"),
                                   frag("decode0", "worker-1", 0, 1, "decode")])
    served, roles = serving_roles(split, "off")
    assert roles == {} and len(served.replicas()) == 2


def test_on_makes_the_first_replica_prefill_and_the_others_decode() -> None:
    replicas = plan("replicas", [frag(f"r{i}", f"worker-{i}", i) for i in range(3)])
    served, roles = serving_roles(replicas, "on")
    assert served is replicas
    assert roles == {"replica-0": "prefill", "replica-1": "decode", "replica-2": "decode"}
    assert serving_roles(replicas, "auto") == (replicas, {})


@pytest.mark.parametrize("fragments, shape", [
    ([frag("r0", "worker-0", 0)], "1 replica"),
    ([frag("s0", "worker-0", 0, 0, layers=(0, 15)), frag("s1", "worker-1", 0, 1, layers=(15, 30))], "pipeline"),
])
def test_on_refuses_a_plan_it_cannot_split(fragments, shape) -> None:
    with pytest.raises(ConfigError, match=f"serving.disaggregation is on.*{shape}"):
        serving_roles(plan("single" if len(fragments) == 1 else "pipeline", fragments), "on")


def test_the_predicted_handoff_bytes_follow_the_served_dtype() -> None:
    from types import SimpleNamespace

    profile = SimpleNamespace(llm=SimpleNamespace(kv_bytes_per_token=23040, dtype_bytes=2))  # bf16 analysis
    assert kv_bytes_per_token(profile, "torch.float32") == 46080
    assert kv_bytes_per_token(profile, "bfloat16") == 23040
    assert kv_bytes_per_token(SimpleNamespace(llm=None), "float32") == 0


def test_the_config_names_its_choices() -> None:
    cfg = parse_config({"model": {"name": "m"}, "serving": {"disaggregation": "on", "handoff_lease_s": 2.5}})
    assert (cfg.serving.disaggregation, cfg.serving.handoff_lease_s) == ("on", 2.5)
    assert parse_config({"model": {"name": "m"}}).serving.disaggregation == "auto"
    with pytest.raises(ConfigError, match="disaggregation: Input should be 'auto', 'off' or 'on'"):
        parse_config({"model": {"name": "m"}, "serving": {"disaggregation": True}})
    with pytest.raises(ConfigError, match="handoff_lease_s"):
        parse_config({"model": {"name": "m"}, "serving": {"handoff_lease_s": 0}})
