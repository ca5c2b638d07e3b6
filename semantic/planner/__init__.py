"""plan(profile, cluster) -> Plan: fragments, placement, transfers, predicted cost and a reason per decision.

The strategy follows the workload: LLMs replicate, pipeline or disaggregate by memory and SLOs; multimodal
models run their branches in parallel; recsys models put tables apart from the MLP when memory demands it;
everything else replicates or pipelines its blocks. A strategy pinned in PlanOptions is planned or refused with
the reason (pinned.py). Plans are deterministic: same inputs, same plan.
"""

from __future__ import annotations

from collections.abc import Callable

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner.branches import plan_branches
from genie.semantic.planner.generic import plan_blocks
from genie.semantic.planner.llm import plan_llm
from genie.semantic.planner.options import PINNABLE, PlanOptions
from genie.semantic.planner.pinned import plan_pinned
from genie.semantic.planner.recsys import plan_recsys
from genie.semantic.planner.types import STRATEGIES, Plan, PlanFragment, Prediction, Transfer
from genie.semantic.profile import Profile, WorkloadType

__all__ = ["PINNABLE", "STRATEGIES", "Plan", "PlanFragment", "PlanOptions", "Prediction", "Transfer", "plan"]

_BY_WORKLOAD: dict[WorkloadType, Callable[[Profile, ClusterSpec, PlanOptions], Plan]] = {
    WorkloadType.LLM: plan_llm,
    WorkloadType.MULTIMODAL: plan_branches,
    WorkloadType.RECSYS: plan_recsys,
}


def plan(profile: Profile, cluster: ClusterSpec, options: PlanOptions | None = None) -> Plan:
    if not isinstance(profile, Profile):
        raise TypeError(f"plan needs a Profile (from genie.semantic.analyze), got {type(profile).__name__}")
    if not isinstance(cluster, ClusterSpec):
        raise TypeError(f"plan needs a ClusterSpec, got {type(cluster).__name__}")
    if not profile.blocks:
        raise ValueError(f"profile {profile.name!r} has no blocks to place; re-analyse the model")
    options = options or PlanOptions()
    if options.strategy != "auto":
        return plan_pinned(profile, cluster, options)
    workload = WorkloadType(profile.workload_type)
    strategy = _BY_WORKLOAD.get(workload, plan_blocks)
    if workload is WorkloadType.LLM and profile.llm is None:
        strategy = plan_blocks  # encoder-decoder LMs are placed by blocks
    return strategy(profile, cluster, options)
