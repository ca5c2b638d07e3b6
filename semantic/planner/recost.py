"""A plan's fragments re-costed on a (calibrated) cluster: step time at a batch size, and the bytes a request
brings to each fragment. Non-LLM plans only: their fragments name the profile blocks they run."""

from __future__ import annotations

import math

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.types import PlanFragment
from genie.semantic.profile import Block, Profile

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1, "uint8": 1}


def blocks_of(profile: Profile, fragment: PlanFragment) -> list[Block]:
    names = set(fragment.nodes)
    return [b for b in profile.blocks if b.name in names]


def step_time(profile: Profile, cluster: ClusterSpec, fragment: PlanFragment, batch: int) -> float:
    """Roofline seconds of one batch of `batch` requests through the fragment on its worker."""
    return bc.time(blocks_of(profile, fragment), cluster.worker(fragment.worker), batch)


def input_bytes(profile: Profile, names: set[str] | None = None) -> int:
    """Bytes per request of the model's inputs (all, or those named), from the profile's example shapes."""
    total = 0
    for i in profile.inputs:
        if names is None or i.name in names:
            total += math.prod(i.shape[1:]) * _DTYPE_BYTES.get(i.dtype, 4)
    return total

