"""A strategy pinned by the user (`strategy:` on a model entry): planned when it applies and fits, otherwise
refused with the reason (a ValueError whose text says what to change). "auto" never comes here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.branches import plan_branches
from genie.semantic.planner.generic import pipeline, replicas
from genie.semantic.planner.llm import plan_llm
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.recsys import split_recsys
from genie.semantic.planner.types import Plan
from genie.semantic.profile import Profile, WorkloadType

GiB = 2**30


def plan_pinned(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    return _PINNED[options.strategy](profile, cluster, options)


def _refuse(profile: Profile, strategy: str, why: str) -> ValueError:
    return ValueError(f"strategy {strategy} was pinned for {profile.name} but {why}")


def _is_llm(profile: Profile) -> bool:
    return profile.workload_type == WorkloadType.LLM.value and profile.llm is not None


def _llm(profile: Profile, cluster: ClusterSpec, options: PlanOptions, disaggregate: bool) -> Plan:
    return plan_llm(profile, cluster, dataclasses.replace(options, disaggregate=disaggregate))


def _replicas(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    if _is_llm(profile):
        p = _llm(profile, cluster, options, False)
        if p.strategy not in ("replicas", "single"):
            raise _refuse(profile, "replicas", "the model does not fit one worker (the planner made a "
                          f"{p.strategy} plan); add memory, or pin pipeline")
        return p
    need = bc.whole_memory(profile, options)
    whole = sorted((w for w in cluster.workers if need <= options.usable(w.memory_bytes)), key=lambda w: w.name)
    if not whole:
        raise _refuse(profile, "replicas", f"the whole model needs {need / GiB:.2f} GiB and fits no worker; add "
                      "memory (workers.memory_mib), or pin pipeline")
    return replicas(profile, cluster, options, whole, f"pinned replicas: {profile.workload_type} model fits")


def _pipeline(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    p = _llm(profile, cluster, options, False) if _is_llm(profile) else pipeline(profile, cluster, options)
    if p.strategy != "pipeline" or all(len(group) < 2 for group in p.replicas()):
        raise _refuse(profile, "pipeline", "the model fits one worker, so a pipeline would be one stage; lower "
                      "workers.memory_mib to force stages, or pin replicas")
    return p


def _branch_parallel(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    branches = sorted({b.branch for b in profile.blocks if b.branch})
    if profile.workload_type != WorkloadType.MULTIMODAL.value or len(branches) < 2:
        raise _refuse(profile, "branch_parallel", f"it is a {profile.workload_type} model with "
                      f"{len(branches)} independent modality branch(es); branch_parallel needs a multimodal model "
                      "with two or more")
    if len(cluster.workers) < 2:
        raise _refuse(profile, "branch_parallel", "the cluster has one worker; set workers.launch to 2 or more")
    return plan_branches(profile, cluster, options)


def _recsys_split(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    tables = [b for b in profile.blocks if b.kind == "sparse"]
    if profile.workload_type != WorkloadType.RECSYS.value or not tables:
        raise _refuse(profile, "recsys_split", f"it is a {profile.workload_type} model with {len(tables)} "
                      "embedding table(s); recsys_split needs a recommender with sparse tables")
    if len(cluster.workers) < 2:
        raise _refuse(profile, "recsys_split", "the cluster has one worker; set workers.launch to 2 or more")
    try:
        return split_recsys(profile, cluster, options, "pinned recsys_split: embedding tables (memory-bound) "
                            "apart from the dense interaction + MLP (compute-bound)")
    except ValueError as exc:
        raise _refuse(profile, "recsys_split", f"it does not fit: {exc}") from None


def _disaggregated(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    if not _is_llm(profile):
        raise _refuse(profile, "disaggregated", f"it is a {profile.workload_type} model; prefill/decode "
                      "disaggregation applies to decoder-only LLMs")
    p = _llm(profile, cluster, options, True)
    if p.strategy != "disaggregated":
        raise _refuse(profile, "disaggregated", "it needs two workers that each hold the whole model with its KV "
                      f"cache (the planner made a {p.strategy} plan); add workers or memory")
    return p


_PINNED: dict[str, Callable[[Profile, ClusterSpec, PlanOptions], Plan]] = {
    "replicas": _replicas,
    "pipeline": _pipeline,
    "branch_parallel": _branch_parallel,
    "recsys_split": _recsys_split,
    "disaggregated": _disaggregated,
}
