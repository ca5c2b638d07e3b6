"""The registry's calls into the semantic layer: a profile per version, a plan per (profile, cluster).

HF and GGUF versions are analysed from their config alone (a weightless skeleton on the meta device);
`py:` versions from the factory's model and the stored example inputs. Failures of either step become
one-line errors for the user, raised before the registry writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genie import semantic as sem
from genie.errors import GenieError, InvalidRequest

from .factory import load_skeleton
from .hf import load_hf_config
from .imported import first_line


@dataclass(frozen=True, slots=True)
class Target:
    """One version as analysis sees it; `model`/`inputs` short-cut the py: factory at registration."""

    name: str
    folder: Path
    format: str
    architecture: str
    dtype: str
    parameters: int
    details: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    inputs: Any = None


def analyzer_version() -> str:
    """The key profiles are cached under: a new analyser version makes every profile a miss."""
    return sem.ANALYZER_VERSION


def make_profile(target: Target) -> sem.Profile:
    try:
        model, inputs = _model_and_inputs(target)
        return sem.analyze(model, inputs, name=target.name)
    except GenieError:
        raise
    except Exception as exc:
        raise InvalidRequest(
            f"the semantic analyser failed on {target.name} ({target.architecture}): {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from None


def make_plan(profile: sem.Profile, cluster: sem.ClusterSpec) -> sem.Plan:
    try:
        return sem.plan(profile, cluster)
    except ValueError as exc:  # the planner's way of saying the model does not fit this cluster
        raise InvalidRequest(f"cannot plan {profile.name} on this cluster: {first_line(exc)}") from None


def _model_and_inputs(target: Target) -> tuple[Any, Any]:
    if target.model is not None:
        return target.model, target.inputs
    if target.format == "py":
        return load_skeleton(target.details["factory"], target.folder)
    return sem.skeleton_from_hf_config(load_hf_config(target.folder))
