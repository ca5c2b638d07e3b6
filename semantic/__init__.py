"""Semantic analysis: capture a model's graph, find its patterns, classify the workload, cost it, plan it.

Pure logic over torch and networkx. The registry calls `analyze` once per model and caches the Profile;
`plan(profile, cluster)` turns it into a Plan the router and workers follow.
"""

from genie.semantic.analyze import analyze
from genie.semantic.capture import Graph, capture
from genie.semantic.cluster import ClusterSpec, WorkerSpec
from genie.semantic.hf import skeleton_from_hf_config
from genie.semantic.planner import plan
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import Plan, PlanFragment, Prediction, Transfer
from genie.semantic.profile import (
    Block,
    CostSummary,
    InputInfo,
    LLMShape,
    PatternSummary,
    Phase,
    Profile,
    WorkloadType,
)
from genie.semantic.version import ANALYZER_VERSION

__all__ = [
    "ANALYZER_VERSION",
    "Block",
    "ClusterSpec",
    "CostSummary",
    "Graph",
    "InputInfo",
    "LLMShape",
    "PatternSummary",
    "PlanOptions",
    "Phase",
    "Plan",
    "PlanFragment",
    "Prediction",
    "Profile",
    "Transfer",
    "WorkerSpec",
    "WorkloadType",
    "analyze",
    "capture",
    "plan",
    "skeleton_from_hf_config",
]
