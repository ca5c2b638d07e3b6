"""Lowers one Dynamo FX graph, at one set of input shapes, to a genie.program/1 document (see
workers/programs/wire.py): make_fx under no_grad gives the ATen graph; each op is written by its overload name.

Shapes are specialised: the program is traced for the shapes of the call that lowered it, and a call with
other shapes lowers (and counts) a new program. Weights are the graph inputs Dynamo marks static (parameters
and buffers) plus any tensor constant in the traced graph; they are named, not shipped, in the program.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx

from .tensors import DTYPE_NAMES, sha256

FORMAT = "genie.program/1"
LAYOUTS = {torch.strided: "strided"}
MEMORY_FORMATS = {torch.contiguous_format: "contiguous_format", torch.channels_last: "channels_last",
                  torch.preserve_format: "preserve_format"}


class CannotLower(Exception):
    """The graph holds something genie.program/1 cannot say (a higher-order op, a symbolic size, ...)."""


@dataclass(frozen=True, slots=True)
class Lowered:
    program: bytes  # the JSON text
    program_id: str  # its sha256
    input_args: tuple[int, ...]  # positions of the call's arguments that travel as inputs, in program order
    weight_args: dict[str, int]  # weight slot -> position of the call's argument that holds it
    constants: dict[str, torch.Tensor]  # weight slot -> tensor constant of the traced graph
    targets: frozenset[str]  # the op names it calls
    output_shapes: tuple[tuple[int, ...], ...] = ()  # of each output, in order


def lower(gm: torch.fx.GraphModule, args: list[Any], weight_positions: set[int]) -> Lowered:
    """args: the real call's arguments; weight_positions: which of them are parameters or buffers."""
    with torch.no_grad():
        from torch.fx.experimental.proxy_tensor import make_fx

        traced = make_fx(gm, tracing_mode="fake")(*args)
    return _write(traced, args, weight_positions)


def _write(traced: torch.fx.GraphModule, args: list[Any], weight_positions: set[int]) -> Lowered:
    inputs, weights, nodes, outputs = [], [], [], []
    shapes: tuple[tuple[int, ...], ...] = ()
    input_args, weight_args, constants, targets = [], {}, {}, set()
    placeholders = iter(range(len(args)))
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            index = next(placeholders)
            value = args[index]
            if not isinstance(value, torch.Tensor):
                if node.users:
                    raise CannotLower(f"graph input {node.name} is a {type(value).__name__}, used by the graph")
                continue
            slot = {"name": node.name, "dtype": _dtype(value.dtype), "shape": list(value.shape)}
            if index in weight_positions:
                weights.append(slot)
                weight_args[node.name] = index
            else:
                inputs.append(slot)
                input_args.append(index)
        elif node.op == "get_attr":
            value = getattr(traced, node.target)
            if not isinstance(value, torch.Tensor):
                raise CannotLower(f"graph attribute {node.target} is a {type(value).__name__}, not a tensor")
            weights.append({"name": node.name, "dtype": _dtype(value.dtype), "shape": list(value.shape)})
            constants[node.name] = value.detach()
        elif node.op == "call_function":
            target = _target(node.target)
            targets.add(target)
            nodes.append({"name": node.name, "target": target, "args": [_value(a) for a in node.args],
                          "kwargs": {k: _value(v) for k, v in node.kwargs.items()}})
        elif node.op == "output":
            outputs = [_output(o) for o in _flat(node.args[0])]
            shapes = tuple(_shape(o) for o in _flat(node.args[0]))
        else:
            raise CannotLower(f"FX node {node.name} of kind {node.op}")
    doc = {"format": FORMAT, "inputs": inputs, "weights": weights, "nodes": nodes, "outputs": outputs}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return Lowered(text, sha256(text), tuple(input_args), weight_args, constants, frozenset(targets), shapes)


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    value = node.meta.get("val")
    return tuple(int(d) for d in value.shape) if isinstance(value, torch.Tensor) else ()


def _target(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    raise CannotLower(f"call of {getattr(target, '__name__', target)!r}, which is not a torch.ops overload")


def _dtype(dtype: torch.dtype) -> str:
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise CannotLower(f"a tensor of dtype {dtype}")
    return name


def _flat(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _output(value: Any) -> str:
    if not isinstance(value, torch.fx.Node):
        raise CannotLower(f"a graph output that is {type(value).__name__}, not a tensor")
    return value.name


def _value(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": "nan" if math.isnan(value) else
                                                   ("inf" if value > 0 else "-inf")}
    if isinstance(value, (list, tuple)):
        return [_value(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype(value)}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout) and value in LAYOUTS:
        return {"layout": LAYOUTS[value]}
    if isinstance(value, torch.memory_format) and value in MEMORY_FORMATS:
        return {"memory_format": MEMORY_FORMATS[value]}
    raise CannotLower(f"an op argument of type {type(value).__name__}")
