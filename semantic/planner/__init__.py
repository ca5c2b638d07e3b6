"""plan(profile, cluster) -> Plan."""

from __future__ import annotations

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner.types import Plan
from genie.semantic.profile import Profile


def plan(profile: Profile, cluster: ClusterSpec) -> Plan:
    raise NotImplementedError("plan is being built (issue 5)")
