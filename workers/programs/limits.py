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
