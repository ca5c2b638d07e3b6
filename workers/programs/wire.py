"""The program format, "genie.program/1": JSON text that lists an ATen graph's op calls, read with no unpickling.

    {"format": "genie.program/1",
     "inputs":  [{"name": "x", "dtype": "float32", "shape": [8, 3, 64, 64]}],     # activations, in call order
     "weights": [{"name": "conv.weight", "dtype": "float32", "shape": [16, 3, 3, 3]}],  # bound by BindWeights
     "nodes":   [{"name": "n0", "target": "aten.convolution.default", "args": [...], "kwargs": {...}}],
     "outputs": ["n7", ...]}

A value in args/kwargs is JSON null, a bool, an int, a float, a string, a list of values, or one of these
one-key objects: {"ref": NAME} (an input, weight or earlier node), {"float": "inf"|"-inf"|"nan"},
{"dtype": NAME}, {"device": "cpu"}, {"layout": "strided"}, {"memory_format": NAME}. Nothing else parses:
no pickled payload, no opaque object, no sample input, no field this module does not name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from genie.errors import InvalidRequest

from .allowlist import ALLOWED_OPS, GETITEM

FORMAT = "genie.program/1"
MAX_PROGRAM_BYTES = 64 << 20
MAX_NODES = 200_000
FIELDS = {"format", "inputs", "weights", "nodes", "outputs"}
NODE_FIELDS = {"name", "target", "args", "kwargs"}
SLOT_FIELDS = {"name", "dtype", "shape"}
PICKLE_MARKERS = ("use_pickle", "pickle", "pickled", "opaque", "sample_inputs", "example_inputs")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
LAYOUTS = {"strided": torch.strided}
MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
                  "preserve_format": torch.preserve_format}
FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


class ProgramRefused(InvalidRequest):
    """A program that does not parse, or that calls an op off the allowlist; nothing of it ran."""


@dataclass(frozen=True, slots=True)
class Ref:
    name: str


@dataclass(frozen=True, slots=True)
class DeviceArg:
    """A device argument: the interpreter puts it on the worker's device, whatever the client traced on."""


DEVICE = DeviceArg()


@dataclass(frozen=True, slots=True)
class Slot:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    target: str  # an ALLOWED_OPS name
    op: Any  # the torch OpOverload, or None for getitem
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Program:
    program_id: str
    inputs: tuple[Slot, ...]
    weights: tuple[Slot, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    nbytes: int  # size of its JSON text
    frees: tuple[tuple[str, ...], ...]  # after node i runs, the values no later node or output reads


def program_id(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def parse_program(text: bytes, claimed_id: str) -> Program:
    """Checks and decodes a program; raises ProgramRefused saying what is wrong."""
    if len(text) > MAX_PROGRAM_BYTES:
        raise ProgramRefused(f"program is {len(text)} bytes; the most a worker takes is {MAX_PROGRAM_BYTES}")
    if text[:1] == b"\x80":
        raise ProgramRefused("program is a pickle; workers never unpickle: send genie.program/1 JSON")
    actual = program_id(text)
    if claimed_id != actual:
        raise ProgramRefused(f"program_id {claimed_id[:16]!r}... is not the sha256 of the program ({actual[:16]}...)")
    try:
        doc = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProgramRefused(f"program is not JSON text ({type(exc).__name__}); send genie.program/1 JSON") from None
    return _program(doc, actual, len(text))


def _no_constant(name: str) -> Any:
    raise ProgramRefused(f"program holds the bare JSON constant {name}; write non-finite floats as "
                         '{"float": "inf"}')


def _program(doc: Any, pid: str, nbytes: int) -> Program:
    _check_fields(doc, FIELDS, "program")
    if doc["format"] != FORMAT:
        raise ProgramRefused(f"program format {str(doc['format'])[:40]!r} is not {FORMAT!r}")
    inputs = tuple(_slot(s, "inputs") for s in _list(doc["inputs"], "inputs"))
    weights = tuple(_slot(s, "weights") for s in _list(doc["weights"], "weights"))
    known = {s.name for s in inputs + weights}
    if len(known) != len(inputs) + len(weights):
        raise ProgramRefused("program names an input or weight twice")
    raw_nodes = _list(doc["nodes"], "nodes")
    if len(raw_nodes) > MAX_NODES:
        raise ProgramRefused(f"program has {len(raw_nodes)} nodes; the most a worker takes is {MAX_NODES}")
    slots = frozenset(known)
    nodes = []
    for raw in raw_nodes:
        node = _node(raw, known)
        _check_no_slot_mutation(node, slots)
        known.add(node.name)
        nodes.append(node)
    outputs = tuple(_name(o, "outputs") for o in _list(doc["outputs"], "outputs"))
    for name in outputs:
        if name not in known:
            raise ProgramRefused(f"program output {name[:80]!r} names no input, weight or node")
    return Program(pid, inputs, weights, tuple(nodes), outputs, nbytes, _frees(nodes, outputs, known - slots))


def _frees(nodes: list[Node], outputs: tuple[str, ...], intermediates: set[str]) -> tuple[tuple[str, ...], ...]:
    """Each intermediate is dropped after its last reader, so a run holds only the values still needed."""
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in _refs(list(node.args) + list(node.kwargs.values())):
            last[name] = i
    after: list[list[str]] = [[] for _ in nodes]
    for name, i in last.items():
        if name in intermediates and name not in outputs:
            after[i].append(name)
    return tuple(tuple(names) for names in after)


def _refs(values: list[Any]) -> list[str]:
    found = []
    for value in values:
        if isinstance(value, Ref):
            found.append(value.name)
        elif isinstance(value, list):
            found += _refs(value)
    return found


def _check_no_slot_mutation(node: Node, slots: frozenset[str]) -> None:
    """In-place ops may write intermediates only: a write to a resident weight would change every later call."""
    packet = node.target.split(".")[1] if node.op is not None else ""
    first = node.args[0] if node.args else None
    if packet.endswith("_") and isinstance(first, Ref) and first.name in slots:
        raise ProgramRefused(f"node {node.name[:80]!r} ({node.target}) writes into input or weight "
                             f"{first.name[:80]!r}; programs may not mutate their inputs or weights")
    if node.op is None and not (len(node.args) == 2 and isinstance(first, Ref) and type(node.args[1]) is int):
        raise ProgramRefused(f"node {node.name[:80]!r}: getitem takes a node and an int index")


def _check_fields(doc: Any, fields: set[str], what: str) -> None:
    if not isinstance(doc, dict):
        raise ProgramRefused(f"{what} must be a JSON object")
    extra = sorted(set(doc) - fields)
    for key in extra:
        if key in PICKLE_MARKERS:
            raise ProgramRefused(f"{what} carries {key!r}: pickled payloads, opaque objects and sample inputs "
                                 "are refused; a program holds only op calls, and tensors travel as raw bytes")
    if extra:
        raise ProgramRefused(f"{what} has unknown field {extra[0][:40]!r}; it takes {sorted(fields)}")
    missing = sorted(fields - set(doc) - {"kwargs"})
    if missing:
        raise ProgramRefused(f"{what} lacks field {missing[0]!r}")


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProgramRefused(f"program field {what!r} must be a list")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ProgramRefused(f"a name in {what!r} must be a string of 1 to 512 characters")
    return value


def _slot(raw: Any, what: str) -> Slot:
    _check_fields(raw, SLOT_FIELDS, f"an entry of {what!r}")
    dtype = DTYPES.get(raw["dtype"]) if isinstance(raw["dtype"], str) else None
    if dtype is None:
        raise ProgramRefused(f"{what} {str(raw['name'])[:80]!r} has unknown dtype; use one of {sorted(DTYPES)}")
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProgramRefused(f"{what} {str(raw['name'])[:80]!r} needs a shape of non-negative ints")
    return Slot(_name(raw["name"], what), dtype, tuple(shape))


def _node(raw: Any, known: set[str]) -> Node:
    _check_fields(raw, NODE_FIELDS, "a node")
    name = _name(raw["name"], "nodes")
    if name in known:
        raise ProgramRefused(f"node name {name[:80]!r} is used twice")
    target = raw["target"]
    if not isinstance(target, str) or target not in ALLOWED_OPS:
        shown = target[:120] if isinstance(target, str) else type(target).__name__
        raise ProgramRefused(f"op {shown!r} (node {name[:80]!r}) is not on this worker's allowlist of torch.ops; "
                             "run that graph locally", code="op_not_allowed")
    args = tuple(_value(a, known, name) for a in _list(raw["args"], "args"))
    kwargs_raw = raw.get("kwargs", {})
    if not isinstance(kwargs_raw, dict):
        raise ProgramRefused(f"node {name[:80]!r}: kwargs must be a JSON object")
    kwargs = {str(k): _value(v, known, name) for k, v in kwargs_raw.items()}
    return Node(name, target, None if target == GETITEM else _resolve(target), args, kwargs)


def _resolve(target: str) -> Any:
    """`aten.add.Tensor` -> torch.ops.aten.add.Tensor; only called for allowlisted names."""
    namespace, packet, overload = target.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


def _value(raw: Any, known: set[str], node: str) -> Any:
    if raw is None or isinstance(raw, (bool, int, float, str)):
        return raw
    if isinstance(raw, list):
        return [_value(v, known, node) for v in raw]
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ProgramRefused(f"node {node[:80]!r} has an argument that is not a genie.program/1 value")
    (kind, value), = raw.items()
    table = {"dtype": DTYPES, "layout": LAYOUTS, "memory_format": MEMORY_FORMATS, "float": FLOATS}.get(kind)
    if kind == "ref":
        if value not in known:
            raise ProgramRefused(f"node {node[:80]!r} uses {str(value)[:80]!r} before it is defined")
        return Ref(value)
    if kind == "device":
        if value not in ("cpu", "cuda") and not str(value).startswith("cuda:"):
            raise ProgramRefused(f"node {node[:80]!r} names device {str(value)[:40]!r}")
        return DEVICE  # every tensor of a program lives on the worker's own device
    if table is not None and isinstance(value, str) and value in table:
        return table[value]
    if kind in PICKLE_MARKERS:
        raise ProgramRefused(f"node {node[:80]!r} carries {kind!r}: pickled payloads and opaque objects are refused")
    raise ProgramRefused(f"node {node[:80]!r} has an argument {{{kind[:40]!r}: ...}} that genie.program/1 does not "
                         "know")
