"""Runs a checked program: each node calls its allowlisted torch op on values looked up by name."""

from __future__ import annotations

import operator
import time
from typing import Any

import torch

from genie.errors import InvalidRequest, ResourceExhausted

from .limits import ProgramLimits
from .wire import DeviceArg, Program, Ref, Slot

NO_LIMITS = ProgramLimits(max_output_elements=1 << 62, max_run_seconds=float("inf"))
# Ops that hand back memory as the allocator found it. Their outputs are zeroed, so that a program cannot read
# what an earlier run, perhaps another client's, left in that memory.
UNINITIALISED = frozenset({"aten.empty.memory_format", "aten.new_empty.default"})


def check_inputs(program: Program, inputs: list[torch.Tensor]) -> None:
    if len(inputs) != len(program.inputs):
        raise InvalidRequest(f"program {program.program_id[:12]} takes {len(program.inputs)} inputs, got "
                             f"{len(inputs)}")
    for slot, tensor in zip(program.inputs, inputs):
        _check_slot(slot, tensor, "input")


def check_weight(slot: Slot, tensor: torch.Tensor) -> None:
    _check_slot(slot, tensor, "weight")


def _check_slot(slot: Slot, tensor: torch.Tensor, what: str) -> None:
    if tensor.dtype != slot.dtype or tuple(tensor.shape) != slot.shape:
        raise InvalidRequest(
            f"{what} {slot.name[:80]!r} is {tensor.dtype} {list(tensor.shape)}; the program was traced for "
            f"{slot.dtype} {list(slot.shape)}"
        )


def run_program(program: Program, weights: dict[str, torch.Tensor], inputs: list[torch.Tensor],
                device: torch.device, limits: ProgramLimits = NO_LIMITS) -> list[torch.Tensor]:
    """inputs: tensors in the program's input order; returns its outputs on `device`. (sizes.py checks a
    program's output sizes on meta before it is cached.)"""
    started = time.perf_counter()
    env: dict[str, Any] = dict(weights)
    env.update((slot.name, t.to(device)) for slot, t in zip(program.inputs, inputs))

    def value(arg: Any) -> Any:
        if isinstance(arg, Ref):
            return env[arg.name]
        if isinstance(arg, list):
            return [value(a) for a in arg]
        if isinstance(arg, DeviceArg):
            return device
        return arg

    with torch.inference_mode():
        for node, frees in zip(program.nodes, program.frees):
            args = [value(a) for a in node.args]
            kwargs = {k: value(v) for k, v in node.kwargs.items()}
            try:
                env[node.name] = out = operator.getitem(*args) if node.op is None else node.op(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise  # the servicer answers RESOURCE_EXHAUSTED
            except NotImplementedError:
                raise  # an op this build of torch lacks: the servicer's own error, not the program's mistake
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # the program's own mistake
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InvalidRequest(f"program {program.program_id[:12]} failed at node {node.name[:80]!r} "
                                     f"({node.target}): {first}") from None
            _check_limits(program, node.name, node.target, out, started, limits)
            if node.target in UNINITIALISED:
                out.zero_()
            for name in frees:
                del env[name]
    outputs = [env[name] for name in program.outputs]
    bad = next((name for name, out in zip(program.outputs, outputs) if not isinstance(out, torch.Tensor)), None)
    if bad is not None:
        raise InvalidRequest(f"program output {bad[:80]!r} is not a tensor")
    return outputs


def _check_limits(program: Program, name: str, target: str, out: Any, started: float,
                  limits: ProgramLimits) -> None:
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(t, torch.Tensor) and t.numel() > limits.max_output_elements:
            raise ResourceExhausted(
                f"program {program.program_id[:12]}: node {name[:80]!r} ({target}) makes a tensor of "
                f"{t.numel()} elements; this worker allows at most {limits.max_output_elements} per op output")
    elapsed = time.perf_counter() - started
    if elapsed > limits.max_run_seconds:
        raise ResourceExhausted(
            f"program {program.program_id[:12]} ran {elapsed:.1f} s, past this worker's limit of "
            f"{limits.max_run_seconds:g} s per RunProgram (stopped at node {name[:80]!r}); send smaller inputs")
