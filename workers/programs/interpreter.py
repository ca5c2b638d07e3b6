"""Runs a checked program: each node calls its allowlisted torch op on values looked up by name."""

from __future__ import annotations

import operator
from typing import Any

import torch

from genie.errors import InvalidRequest

from .wire import DeviceArg, Program, Ref, Slot


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
                device: torch.device) -> list[torch.Tensor]:
    """inputs: CPU tensors in the program's input order; returns its outputs on the CPU."""
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
                env[node.name] = operator.getitem(*args) if node.op is None else node.op(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise  # the servicer answers RESOURCE_EXHAUSTED
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # the program's own mistake
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise InvalidRequest(f"program {program.program_id[:12]} failed at node {node.name[:80]!r} "
                                     f"({node.target}): {first}") from None
            for name in frees:
                del env[name]
    outputs = [env[name] for name in program.outputs]
    bad = next((name for name, out in zip(program.outputs, outputs) if not isinstance(out, torch.Tensor)), None)
    if bad is not None:
        raise InvalidRequest(f"program output {bad[:80]!r} is not a tensor")
    return [out.cpu() for out in outputs]
