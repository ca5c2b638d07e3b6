"""Materialising genie tensors: the recorded graph behind them becomes one genie.program/1 program (the format
of workers/programs/wire.py) and runs in one RunProgram round trip.

Known values (tensors moved with .to("genie"), results fetched before, RNG results) travel as the program's
inputs; plain CPU tensors that ops read (a CPU module's weights) and parameters moved with module.to("genie")
are its weights, bound by sha256 and resident on the worker, so they travel once. Nodes are named by their
place in the program, so the same eager code at the same shapes makes the same program: LoadProgram and
BindWeights happen once, later runs are one RPC.

Besides the tensors asked for, every live tensor of the graph (one the user still holds) is fetched too, so
a loop that reads a value each step does not recompute its whole history each time.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from typing import Any

import torch

from .backend import GenieFallbackWarning
from .errors import ProgramRefused
from .lazy import GETITEM, VIEW_LEAF, Node, made_by_view
from .lower import FORMAT, LAYOUTS, MEMORY_FORMATS, CannotLower, Lowered
from .session import Bound, Session, current
from .tensors import DTYPE_NAMES, sha256

aten = torch.ops.aten
EMPTY_OPS = (aten.empty.memory_format, aten.empty_strided.default)
_bound: dict[tuple[int, str], tuple[tuple[tuple[int, int], ...], Bound]] = {}
_bound_lock = threading.Lock()


class Stats:
    """Counters of the genie device in this process (genie.client.device_report())."""

    materialisations = 0  # programs sent (or run here because the worker refused them)
    local_programs = 0  # of those, run here
    nodes = 0  # recorded ops those programs carried


def materialise(nodes: list[Node]) -> list[torch.Tensor]:
    """The CPU values of `nodes`, computing the pending ones in one program."""
    pending = [n for n in nodes if n.value is None]
    for node in pending:
        if node.op in EMPTY_OPS:  # uninitialised memory: nothing to compute, nothing to fetch
            shape, stride, dtype, _ = node.meta
            _settle(node, torch.empty_strided(shape, stride, dtype=dtype, device="cpu"))
    pending = [n for n in pending if n.value is None]
    if pending:
        _compute(pending)
    return [n.value for n in nodes]


def _compute(wanted: list[Node]) -> None:
    order = _topo(wanted)
    chosen = {id(n) for n in wanted}
    outputs = [n for n in order if id(n) in chosen or (n.meta is not None and n.ref is not None and
                                                       n.ref() is not None)]
    Stats.materialisations += 1
    Stats.nodes += len(order)
    try:
        lowered, inputs = _lower(order, outputs)
    except CannotLower as exc:
        return _run_here(order, outputs, f"the graph holds {exc}")
    session = current()
    try:
        values = session.load_and_run(lowered, inputs)  # a program without weights: one round trip
        if values is None:
            session.place(lowered)
    except ProgramRefused as exc:
        return _run_here(order, outputs, f"the worker refused it: {exc}")
    if values is None:
        values = session.run(lowered, _binding(session, lowered), inputs)
    for node, value in zip(outputs, values):
        _settle(node, value)


def _topo(wanted: list[Node]) -> list[Node]:
    """Pending nodes the wanted ones depend on, inputs first (iterative: graphs can be 100k ops deep)."""
    order: list[Node] = []
    state: dict[int, bool] = {}  # id -> done
    stack: list[tuple[Node, bool]] = [(n, False) for n in reversed(wanted)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            state[id(node)] = True
            order.append(node)
            continue
        if id(node) in state:
            continue
        state[id(node)] = False
        stack.append((node, True))
        for arg in reversed(_node_args(node)):
            if arg.value is None and id(arg) not in state:
                stack.append((arg, False))
    return order


def _node_args(node: Node) -> list[Node]:
    found: list[Node] = []
    _collect(list(node.args) + list(node.kwargs.values()), found)
    return found


def _collect(values: Any, found: list[Node]) -> None:
    for v in values:
        if type(v) is Node:
            found.append(v)
        elif isinstance(v, list):
            _collect(v, found)


class _Writer:
    """Names and JSON values for one program."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.inputs: list[dict[str, Any]] = []
        self.input_values: list[torch.Tensor] = []
        self.weights: list[dict[str, Any]] = []
        self.constants: dict[str, torch.Tensor] = {}

    def value(self, v: Any) -> Any:
        if type(v) is Node:
            return {"ref": self._node(v)}
        if isinstance(v, torch.Tensor):
            return {"ref": self._constant(v)}
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(v, (list, tuple)):
            return [self.value(x) for x in v]
        if isinstance(v, torch.dtype):
            return {"dtype": _dtype(v)}
        if isinstance(v, torch.device):
            return {"device": "cpu"}  # the worker puts every tensor of a program on its own device
        if isinstance(v, torch.layout) and v in LAYOUTS:
            return {"layout": LAYOUTS[v]}
        if isinstance(v, torch.memory_format) and v in MEMORY_FORMATS:
            return {"memory_format": MEMORY_FORMATS[v]}
        raise CannotLower(f"an op argument of type {type(v).__name__}")

    def _node(self, node: Node) -> str:
        name = self.names.get(id(node))
        if name is None and node.resident:  # a module's parameter: a weight, resident on the worker
            name = self.names[id(node)] = self._constant(node.value)
        if name is None:  # a known value, read for the first time: it is an input
            assert node.value is not None, "a pending node is written before its readers"
            name = self.names[id(node)] = f"i{len(self.inputs)}"
            value = node.value
            self.inputs.append({"name": name, "dtype": _dtype(value.dtype), "shape": list(value.shape)})
            self.input_values.append(value)
        return name

    def _constant(self, t: torch.Tensor) -> str:
        name = self.names.get(id(t))
        if name is None:
            name = self.names[id(t)] = f"w{len(self.weights)}"
            self.weights.append({"name": name, "dtype": _dtype(t.dtype), "shape": list(t.shape)})
            self.constants[name] = t  # itself, not a detached alias: its id and _version stamp the binding
        return name


def _lower(order: list[Node], outputs: list[Node]) -> tuple[Lowered, list[torch.Tensor]]:
    writer = _Writer()
    nodes, targets = [], set()
    for i, node in enumerate(order):
        op, args, kwargs = _as_written(node)
        target = GETITEM if op is GETITEM else str(op)
        targets.add(target)
        entry = {"name": f"n{i}", "target": target, "args": [writer.value(a) for a in args],
                 "kwargs": {k: writer.value(v) for k, v in kwargs.items()}}
        writer.names[id(node)] = entry["name"]
        nodes.append(entry)
    for node in outputs:
        _dtype(node.meta[2])
    doc = {"format": FORMAT, "inputs": writer.inputs, "weights": writer.weights, "nodes": nodes,
           "outputs": [writer.names[id(n)] for n in outputs]}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    lowered = Lowered(text, sha256(text), tuple(range(len(writer.inputs))), {}, writer.constants,
                      frozenset(targets))
    return lowered, writer.input_values


def _as_written(node: Node) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """empty_strided (what .to("genie") allocates) is written as empty: its strides are the client's metadata."""
    if node.op is aten.empty_strided.default:
        kwargs = {k: v for k, v in node.kwargs.items() if k in ("dtype", "layout", "device", "pin_memory")}
        return aten.empty.memory_format, (node.args[0],), kwargs
    return node.op, node.args, node.kwargs


def _binding(session: Session, lowered: Lowered) -> Bound:
    """BindWeights once per program and set of weights (by identity and version), not once per run."""
    stamp = tuple((id(t), t._version) for t in lowered.constants.values())
    key = (id(session), lowered.program_id)
    with _bound_lock:
        known = _bound.get(key)
    if known is not None and known[0] == stamp:
        return known[1]
    bound = session.bind(lowered, [])
    with _bound_lock:
        _bound[key] = (stamp, bound)
    return bound


def _run_here(order: list[Node], outputs: list[Node], why: str) -> None:
    warnings.warn(f"genie: a program of the genie device runs here (eager) because {why}", GenieFallbackWarning,
                  stacklevel=4)
    Stats.local_programs += 1
    env: dict[int, Any] = {}

    def value(v: Any) -> Any:
        if type(v) is Node:
            return v.value if v.value is not None else env[id(v)]
        if isinstance(v, torch.device):
            return torch.device("cpu")
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    with torch.no_grad():
        for node in order:
            args = [value(a) for a in node.args]
            kwargs = {k: value(v) for k, v in node.kwargs.items()}
            env[id(node)] = args[0][args[1]] if node.op is GETITEM else node.op(*args, **kwargs)
    for node in outputs:
        _settle(node, env[id(node)])


def _settle(node: Node, value: torch.Tensor) -> None:
    """The node is a leaf now: it keeps its value and lets go of its inputs."""
    view = made_by_view(node)
    node.value = value
    node.op = VIEW_LEAF if view else None
    node.args = ()
    node.kwargs = {}


def _dtype(dtype: torch.dtype) -> str:
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise CannotLower(f"a tensor of dtype {dtype}")
    return name
