"""What one client's programs may take of a shared worker. The relay is open to any API-key holder, so a
program must not be able to ask the worker for any allowlisted op at any size: each limit is checked before
the work it bounds where it can be (shapes are inferred on meta tensors at LoadProgram), and between ops
where it cannot (data-dependent shapes, time). A refusal is RESOURCE_EXHAUSTED with the limit named; the
worker keeps serving everyone else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProgramLimits:
    program_bytes: int = 256 << 20  # JSON text of cached programs, all clients together
    weight_bytes: int = 8 << 30  # tensor data of bound weights, all clients together
    client_bytes: int = 2 << 30  # one client's bound weights plus the outputs it keeps resident
    max_output_elements: int = 1 << 28  # elements of any one op's output (1 GiB of float32)
    max_run_seconds: float = 60.0  # wall time of one RunProgram, checked after each op


# genie-worker flags of the per-client limits (workers/cli.py), as genie-serve passes its config's to the
# workers it launches (workers.programs in the YAML)
FLAGS = {"max_output_elements": "--program-max-output-elements", "max_run_seconds": "--program-max-run-s",
         "client_bytes": "--program-client-bytes"}


def limits_from_config(section: object) -> ProgramLimits:
    """The limits of a config's `workers.programs` (genie.config.ProgramLimitsConfig)."""
    return ProgramLimits(max_output_elements=section.max_output_elements,  # type: ignore[attr-defined]
                         max_run_seconds=section.max_run_s,  # type: ignore[attr-defined]
                         client_bytes=section.client_mib << 20)  # type: ignore[attr-defined]


def worker_args(limits: ProgramLimits) -> list[str]:
    """The genie-worker flags that give a worker these per-client limits."""
    return [arg for field, flag in FLAGS.items() for arg in (flag, repr(getattr(limits, field)))]
