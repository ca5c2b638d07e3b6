"""Which replicas prefill and which decode: `serving.disaggregation` read against the model's plan.

The planner writes a `disaggregated` plan as one replica of two whole-model fragments, prefill0 and decode0.
The router serves it as two single-fragment replicas with roles: new requests are prefilled on the prefill
replica, and each then moves to the decode replica with one KV handoff (scheduler.py, handoffs.py).
- auto (default): follow the plan.
- off: serve every fragment as a replica that does both, even under a disaggregated plan.
- on: disaggregate even a replicas plan: its first replica prefills, the others decode.
"""

from __future__ import annotations

import dataclasses
import logging

from genie.errors import ConfigError
from genie.semantic.planner.types import Plan
from genie.semantic.profile import Profile

from .launcher import replica_name
from .scheduler import DECODE, PREFILL

log = logging.getLogger("genie.serve")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def serving_roles(plan: Plan, mode: str) -> tuple[Plan, dict[str, str]]:
    """The plan the router serves (every replica single-fragment or a pipeline) and {replica: role}."""
    if plan.strategy == "disaggregated":
        fragments = [dataclasses.replace(f, replica=i, stage=0, role="all") for i, f in enumerate(plan.fragments)]
        served = dataclasses.replace(plan, fragments=fragments, transfers=[] if mode == "off" else plan.transfers)
        if mode == "off":
            return served, {}
        return served, {replica_name(new): old.role for new, old in zip(fragments, plan.fragments, strict=True)}
    if mode != "on":
        return plan, {}
    groups = plan.replicas()
    if len(groups) < 2 or any(len(group) > 1 for group in groups):
        shape = f"{len(groups)} replica(s)" + (" split into pipeline stages" if any(len(g) > 1 for g in groups) else "")
        raise ConfigError(
            f"serving.disaggregation is on, but the plan of {plan.model} has {shape}; disaggregation needs at "
            "least two workers that each hold the whole model (workers.launch: 2 or more), or set it to auto"
        )
    names = [replica_name(group[0]) for group in groups]
    return plan, {names[0]: PREFILL, **{name: DECODE for name in names[1:]}}


def kv_bytes_per_token(profile: Profile, dtype: str) -> int:
    """The profile's KV bytes per token, in the dtype the workers compute in; 0 when the profile has none."""
    llm = profile.llm
    if llm is None or not llm.kv_bytes_per_token:
        return 0
    served = DTYPE_BYTES.get(dtype.removeprefix("torch."), llm.dtype_bytes)
    return llm.kv_bytes_per_token // llm.dtype_bytes * served


def describe(roles: dict[str, str], lease_s: float) -> str:
    prefill = ", ".join(sorted(r for r, role in roles.items() if role == PREFILL))
    decode = ", ".join(sorted(r for r, role in roles.items() if role == DECODE))
    return f"disaggregated: {prefill} prefill, {decode} decode; one KV handoff per request, leased for {lease_s:g} s"
