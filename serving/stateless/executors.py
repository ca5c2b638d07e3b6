"""One table from a stateless plan's strategy to what runs it: what each worker loads (its FragmentSpec) and the
executor that drives a batch through a replica. start_stateless.py brings a model up with them, and
replan.py a re-planned one."""

from __future__ import annotations

import dataclasses

from genie.semantic import Plan
from genie.workers.contract import FragmentInfo, FragmentSpec

from .branches import branch_executor, branch_specs
from .pipeline import Pipelined, pipeline_info, pipeline_specs
from .split import WholeModel, recsys_executor, split_specs

SPLIT = ("recsys_split", "branch_parallel", "pipeline")  # strategies with an executor of their own


def specs_for(plan: Plan, base: FragmentSpec) -> dict[str, FragmentSpec]:
    """fragment_id -> what its worker loads; `base` holds what every fragment of the model shares."""
    if plan.strategy == "recsys_split":
        return split_specs(plan, base)
    if plan.strategy == "branch_parallel":
        return branch_specs(plan, base)
    if plan.strategy == "pipeline":
        return pipeline_specs(plan, base)
    return {f.fragment_id: dataclasses.replace(base, fragment_id=f.fragment_id) for f in plan.fragments}


def executor_for(plan: Plan, infos: list[FragmentInfo]):
    """How a batch runs on a replica, and the model as a client sees it (`infos`: load_replicas' order)."""
    if plan.strategy == "recsys_split":
        return recsys_executor(infos)
    if plan.strategy == "branch_parallel":
        order = [f.fragment_id for group in plan.replicas() for f in group]
        return branch_executor(plan, dict(zip(order, infos, strict=True)))
    if plan.strategy == "pipeline":
        return Pipelined(), pipeline_info(infos[:len(plan.replicas()[0])])
    return WholeModel(), infos[0]


def not_runnable(plan: Plan) -> str | None:
    """Why genie-serve cannot run the plan as planned, or None: whole copies, or a split it has an executor for."""
    if plan.strategy in SPLIT or all(len(group) == 1 for group in plan.replicas()):
        return None
    return f"genie-serve has no executor for {plan.strategy} plans of stateless models"
