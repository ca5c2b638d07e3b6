"""The registry's calls into the semantic layer: a profile per version, a plan per (profile, cluster).

HF and GGUF versions are analysed from their config alone (a weightless skeleton on the meta device);
`py:` versions from the factory's model and the stored example inputs.

Until `genie.semantic.analyze` is implemented (it raises NotImplementedError meanwhile), the registry
records an interim profile with the facts it knows (architecture, parameter count, dtype, layer count),
keyed under its own analyser version so that it is replaced as soon as the real analyser answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from genie import semantic as sem
from genie.errors import InvalidRequest, Unavailable

from .factory import load_skeleton
from .hf import load_hf_config
from .imported import first_line
from .names import human_count

log = logging.getLogger(__name__)

_DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}


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
    """The key profiles are cached under for the analyser this process runs."""
    return sem.ANALYZER_VERSION if _real_analyzer() else f"{sem.ANALYZER_VERSION}+interim"


def make_profile(target: Target) -> sem.Profile:
    if not _real_analyzer():
        return _interim_profile(target)
    model, inputs = _model_and_inputs(target)
    try:
        return sem.analyze(model, inputs, name=target.name)
    except Exception as exc:
        raise InvalidRequest(
            f"the semantic analyser failed on {target.name} ({target.architecture}): {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from None


def make_plan(profile: sem.Profile, cluster: sem.ClusterSpec) -> sem.Plan:
    try:
        return sem.plan(profile, cluster)
    except NotImplementedError:
        raise Unavailable(
            "the planner (genie.semantic.plan) is not implemented in this build yet, so no plan can be made"
        ) from None


def _model_and_inputs(target: Target) -> tuple[Any, Any]:
    if target.model is not None:
        return target.model, target.inputs
    if target.format == "py":
        return load_skeleton(target.details["factory"], target.folder)
    return sem.skeleton_from_hf_config(load_hf_config(target.folder))


@cache
def _real_analyzer() -> bool:
    """False while genie.semantic.analyze is still the NotImplementedError placeholder."""
    import torch
    from torch import nn

    with torch.device("meta"):
        probe, x = nn.Linear(2, 2), torch.zeros(1, 2)
    try:
        sem.analyze(probe, (x,), name="probe")
    except NotImplementedError:
        log.warning("genie.semantic.analyze is not implemented yet; the registry records interim profiles")
        return False
    except Exception:
        return True  # implemented; whatever it thinks of the probe does not matter here
    return True


@cache
def _causal_lm_classes() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _interim_profile(target: Target) -> sem.Profile:
    dtype_bytes = _DTYPE_BYTES.get(target.dtype, 4)
    param_bytes = target.parameters * dtype_bytes
    layers = target.details.get("num_layers")
    llm = target.architecture in _causal_lm_classes()
    facts = f"{target.architecture}, {human_count(target.parameters)} parameters in {target.dtype}"
    return sem.Profile(
        name=target.name,
        workload_type=sem.WorkloadType.LLM.value if llm else sem.WorkloadType.UNKNOWN.value,
        confidence=0.5 if llm else 0.0,
        explanation=[
            f"interim profile: genie.semantic.analyze is not implemented yet; recorded {facts}"
            + (f", {layers} layers" if layers else ""),
            "workload type read from the architecture (a transformers causal LM class)"
            if llm
            else "workload type not analysed",
        ],
        patterns=[],
        phases=[],
        cost=sem.CostSummary(
            flops=0.0,
            param_bytes=param_bytes,
            activation_bytes=0,
            bytes_moved=param_bytes,
            arithmetic_intensity=0.0,
            dtype_bytes=dtype_bytes,
        ),
        analyzer_version=analyzer_version(),
    )
