"""LoadProgram's size check: each op's output shape, found on meta tensors (no data, no memory), checked
against ProgramLimits.max_output_elements before the program may run.

Running every node on meta costs ~0.3 ms a node (torch's meta kernels are Python refs); programs repeat a
few op signatures many times (a 1,000-op eager program has ten), so each signature's output shapes are
learnt once per worker: the key is the op and its arguments, with tensors as (dtype, shape, stride, offset).
Ops that write to an argument (`add_`, `resize_`) change their input's metadata, so they always run on meta.
Ops whose shape depends on data cannot run on meta: the check stops there, and run_program checks the rest
between ops as they run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .interpreter import _check_limits
from .limits import ProgramLimits
from .wire import DeviceArg, Program, Ref

MAX_SIGNATURES = 4096  # output shapes remembered per worker; the table starts afresh when full
Spec = tuple[torch.dtype, tuple[int, ...], tuple[int, ...], int]  # dtype, shape, stride, storage offset
_learnt: dict[tuple[Any, ...], tuple[Spec, ...] | Spec] = {}
_writes: dict[Any, bool] = {}  # op -> whether it writes to one of its arguments
META = torch.device("meta")


class _Uncacheable(Exception):
    """An argument that cannot be part of a key (unhashable, or a value the key cannot describe)."""


def check_sizes(program: Program, limits: ProgramLimits, learn: bool = True) -> None:
    """Refuses the program (ResourceExhausted) when an op's output would exceed limits.max_output_elements.
    `learn=False` runs every node on meta (the way before the table; benchmarks/client_device.py's baseline)."""
    env: dict[str, Any] = {s.name: torch.empty(s.shape, dtype=s.dtype, device=META)
                           for s in program.inputs + program.weights}
    sizes_only = dataclasses.replace(limits, max_run_seconds=float("inf"))  # meta time says nothing
    with torch.device(META), torch.inference_mode():  # factory ops that name no device allocate nothing either
        for node in program.nodes:
            out = _output(node, env, learn)
            if out is None:  # no meta kernel, a data-dependent shape or the program's own mistake: at run time
                return
            env[node.name] = out
            _check_limits(program, node.name, node.target, out, 0.0, sizes_only)


def _output(node: Any, env: dict[str, Any], learn: bool) -> Any:
    args = [_value(a, env) for a in node.args]
    kwargs = {k: _value(v, env) for k, v in node.kwargs.items()}
    if node.op is None:
        return args[0][args[1]]  # getitem of a tuple output
    key = _key(node, args, kwargs) if learn else None
    known = _learnt.get(key) if key is not None else None
    if known is not None:
        return _build(known)
    try:
        out = node.op(*args, **kwargs)
    except (NotImplementedError, RuntimeError, TypeError, ValueError, IndexError):
        return None
    spec = _spec(out)
    if key is not None and spec is not None:
        if len(_learnt) >= MAX_SIGNATURES:
            _learnt.clear()
        _learnt[key] = spec
    return out


def _value(arg: Any, env: dict[str, Any]) -> Any:
    if isinstance(arg, Ref):
        return env[arg.name]
    if isinstance(arg, list):
        return [_value(a, env) for a in arg]
    if isinstance(arg, DeviceArg):
        return META
    return arg


def _key(node: Any, args: list[Any], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    writes = _writes.get(node.op)
    if writes is None:
        writes = _writes[node.op] = any(a.alias_info is not None and a.alias_info.is_write
                                        for a in node.op._schema.arguments)
    if writes:
        return None
    try:
        key = (node.target, tuple(_part(a) for a in args), tuple((k, _part(v)) for k, v in sorted(kwargs.items())))
        hash(key)
    except (_Uncacheable, TypeError):
        return None
    return key


def _part(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("t", value.dtype, tuple(value.shape), value.stride(), value.storage_offset())
    if isinstance(value, (list, tuple)):
        return ("l", tuple(_part(v) for v in value))
    if isinstance(value, (bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)) \
            or value is None:
        return (type(value).__name__, value)
    raise _Uncacheable


def _spec(out: Any) -> tuple[Spec, ...] | Spec | None:
    if isinstance(out, torch.Tensor):
        return (out.dtype, tuple(out.shape), out.stride(), out.storage_offset())
    if isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(_spec(t) for t in out)  # type: ignore[misc]
    return None


def _build(spec: Any) -> Any:
    if isinstance(spec[0], torch.dtype):
        dtype, shape, stride, _ = spec  # the offset changes no size: the tensor starts at 0 here
        return torch.empty_strided(shape, stride, dtype=dtype, device=META)
    return tuple(_build(s) for s in spec)
