"""The per-op remote baseline of benchmarks/client_api.py: every ATen op of a lowered graph is a program of
its own, run by one RunProgram each, with its tensor arguments sent and its results brought back on every
call (weights included: nothing is resident), the way the origin prototype shipped each op. Each one-op
program is loaded once before timing, so the baseline pays for the round trips and the bytes, not for setup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from genie.client import tensors
from genie.client.lower import Lowered
from genie.client.session import Session
from genie.protos import worker_pb2 as pb
from genie.workers.programs.wire import DeviceArg, Ref, parse_program


@dataclass(slots=True)
class OneOp:
    program_id: str
    binding_id: str
    inputs: list[str]  # value names it takes, in order
    outputs: list[str]  # value names it gives back
    writes: str | None  # the value an in-place op writes into


def refs(value: Any) -> list[str]:
    if isinstance(value, dict) and "ref" in value:
        return [value["ref"]]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def values_of(lowered: Lowered, args: list[Any]) -> dict[str, Any]:
    """Every value of the graph at these arguments, from one local run of the same checked program."""
    program = parse_program(lowered.program, lowered.program_id)
    env: dict[str, Any] = {slot.name: args[i] for slot, i in zip(program.inputs, lowered.input_args)}
    env |= {name: args[i] for name, i in lowered.weight_args.items()} | dict(lowered.constants)

    def value(arg: Any) -> Any:
        if isinstance(arg, list):
            return [value(a) for a in arg]
        return env[arg.name] if isinstance(arg, Ref) else torch.device("cpu") if isinstance(arg, DeviceArg) else arg

    with torch.no_grad():
        for node in program.nodes:
            args_ = [value(a) for a in node.args]
            kwargs = {k: value(v) for k, v in node.kwargs.items()}
            env[node.name] = args_[0][args_[1]] if node.op is None else node.op(*args_, **kwargs)
    return env


def split(session: Session, lowered: Lowered, args: list[Any]) -> list[OneOp]:
    """One program per op (an op's getitem users go with it), each loaded and bound (no weights) once."""
    doc = json.loads(lowered.program)
    known = values_of(lowered, args)
    picks: dict[str, list[dict]] = {}
    for node in doc["nodes"]:
        if node["target"] == "getitem":
            picks.setdefault(node["args"][0]["ref"], []).append(node)
    ops = []
    for node in doc["nodes"]:
        if node["target"] == "getitem":
            continue
        names = list(dict.fromkeys(refs(node["args"]) + refs(list(node["kwargs"].values()))))
        slots = [{"name": n, "dtype": tensors.DTYPE_NAMES[known[n].dtype], "shape": list(known[n].shape)}
                 for n in names]
        outputs = [p["name"] for p in picks.get(node["name"], [])] or [node["name"]]
        in_place = node["target"].split(".")[1].endswith("_")
        # a one-op program may not write into its input: run add_ as add, and keep the result under both names
        op = node | {"target": node["target"].replace("_.", ".", 1)} if in_place else node
        one = {"format": "genie.program/1", "inputs": slots, "weights": [], "nodes": [op] +
               picks.get(node["name"], []), "outputs": outputs}
        text = json.dumps(one, sort_keys=True, separators=(",", ":")).encode()
        pid = tensors.sha256(text)
        session.transport.call("LoadProgram", pb.LoadProgramRequest(program_id=pid, program=text))
        bound = session.transport.call("BindWeights", pb.BindWeightsRequest(program_id=pid))
        writes = names[0] if in_place and names else None
        ops.append(OneOp(pid, bound.binding_id, names, outputs, writes))
    return ops


def run_per_op(session: Session, ops: list[OneOp], lowered: Lowered, args: list[Any]) -> list[torch.Tensor]:
    doc = json.loads(lowered.program)
    env = {slot["name"]: args[i] for slot, i in zip(doc["inputs"], lowered.input_args)}
    env |= {name: args[i] for name, i in lowered.weight_args.items()} | dict(lowered.constants)
    for op in ops:
        request = pb.RunProgramRequest(program_id=op.program_id, binding_id=op.binding_id,
                                       inputs=[tensors.to_pb(env[n]) for n in op.inputs])
        outs = [tensors.from_pb(t) for t in session.transport.call("RunProgram", request).outputs]
        env |= dict(zip(op.outputs, outs))
        if op.writes is not None:  # the worker wrote into its copy: later ops read the written value
            env[op.writes] = outs[0]
    return [env[name] for name in doc["outputs"]]


def per_op_remote(model: torch.nn.Module, session: Session):
    """fn(x) -> the model's output object with `logits`, every op one RunProgram; ops are split per shape."""
    from types import SimpleNamespace

    from genie.client.backend import _weight_positions
    from genie.client.lower import lower

    graphs: dict[tuple[int, ...], tuple[Lowered, list[Any], list[OneOp]]] = {}
    captured: dict[str, Any] = {}

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]):
        positions = _weight_positions(gm, example_inputs)

        def capture(*args: Any) -> Any:
            captured["graph"] = (lower(gm, list(args), positions), list(args))
            return gm(*args)

        return capture

    tracer = torch.compile(model, backend=backend)

    def forward(x: torch.Tensor) -> SimpleNamespace:
        key = tuple(x.shape)
        if key not in graphs:
            tracer(x)  # one local run, to lower the graph at this shape
            lowered, args = captured.pop("graph")
            graphs[key] = (lowered, args, split(session, lowered, args))
        lowered, args, ops = graphs[key]
        first = lowered.input_args[0]
        (logits,) = run_per_op(session, ops, lowered, args[:first] + [x] + args[first + 1:])
        return SimpleNamespace(logits=logits)

    return forward
