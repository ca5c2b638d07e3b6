"""Capture through torch.export (non-strict): one OpRecord per aten op, module paths from nn_module_stack.

Higher-order ops that wrap a subgraph (torch.no_grad / autocast regions) are inlined, so the records form one
flat dataflow graph. Views of weights are folded into the op that consumes them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.export.graph_signature import InputKind
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten

from genie.semantic.capture.ops import op_kind, op_name
from genie.semantic.capture.records import Captured, OpRecord, ParamRef, TensorInfo, scalar_consts, weight_aliases

_WEIGHT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
_NOISY_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """A refused export is reported once by capture(), not as torch's warnings and a partial graph on stderr.

    When export succeeds, whatever it wrote to stderr is passed on unchanged.
    """
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
        sys.stderr.write(held.getvalue())
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_capture(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Captured:
    with _quiet(_NOISY_LOGGERS):
        ep = torch.export.export(model, args, kwargs, strict=False)
    cap = Captured("export", [], {}, {}, set(), [], {})
    refs: dict[Node, Any] = {}
    aliases = weight_aliases(model)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    for spec, node in zip(ep.graph_signature.input_specs, placeholders, strict=True):
        val = node.meta.get("val")
        if spec.kind in _WEIGHT_KINDS and isinstance(val, torch.Tensor):
            target = aliases.get(spec.target, spec.target)
            cap.params[target] = TensorInfo.of(val)
            if spec.kind is not InputKind.PARAMETER:
                cap.buffers.add(target)
            refs[node] = ParamRef(target)
        elif spec.kind is InputKind.USER_INPUT and isinstance(val, torch.Tensor):
            cap.inputs[node.name] = TensorInfo.of(val)
            refs[node] = node.name
        else:
            refs[node] = None
    outs = _Walker(ep.graph_module, cap, refs).walk(ep.graph_module, "")
    cap.outputs = [o for o in outs if isinstance(o, str)]
    return cap


class _Walker:
    def __init__(self, root: GraphModule, cap: Captured, refs: dict[Node, Any]) -> None:
        self.root, self.cap, self.refs = root, cap, refs
        self.names: set[str] = set()

    def walk(self, gm: GraphModule, default_module: str) -> list[Any]:
        for node in gm.graph.nodes:
            if node.op == "call_function":
                self.refs[node] = self._call(node, default_module)
            elif node.op == "output":
                outs, _ = tree_flatten(node.args[0])
                return [self.refs.get(o) if isinstance(o, Node) else None for o in outs]
            elif node.op == "get_attr":
                self.refs[node] = None
        return []

    def _call(self, node: Node, default_module: str) -> Any:
        module = _module_of(node, self.cap.module_types) or default_module
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            return self._inline(node, module)
        flat, _ = tree_flatten((node.args, node.kwargs))
        tensor_refs = [self.refs.get(a) for a in flat if isinstance(a, Node)]
        if op_name(node.target) == "getitem" and isinstance(tensor_refs[0], list):
            return tensor_refs[0][node.args[1]]  # an output of an inlined subgraph
        outputs = [TensorInfo.of(t) for t in tree_flatten(node.meta.get("val"))[0] if isinstance(t, torch.Tensor)]
        if not outputs:
            return None  # asserts, symbolic sizes: no tensor flows on
        name = op_name(node.target)
        live = [r for r in tensor_refs if r is not None]
        if op_kind(name) == "view" and live and all(isinstance(r, ParamRef) for r in live):
            return live[0]  # a view of a weight (w.t(), w.to(dtype)) is the weight
        self.cap.records.append(self._record(node, name, module, flat, outputs))
        return self.cap.records[-1].name

    def _record(self, node: Node, name: str, module: str, flat: list, outputs: list[TensorInfo]) -> OpRecord:
        inputs, params, shapes = [], [], []
        for a in flat:
            if not isinstance(a, Node) or self.refs.get(a) is None:
                continue
            ref = self.refs[a]
            (params if isinstance(ref, ParamRef) else inputs).append(ref.name if isinstance(ref, ParamRef) else ref)
            val = a.meta.get("val")
            if isinstance(val, torch.Tensor):
                shapes.append(tuple(int(s) for s in val.shape))
        rec_name = self._unique(node.name)
        consts = scalar_consts(tuple(node.args), dict(node.kwargs))
        return OpRecord(rec_name, str(node.target), name, inputs, params, shapes, outputs, module, consts)

    def _inline(self, node: Node, module: str) -> list[Any]:
        """wrap_with_set_grad_enabled(flag, submod, *inputs) and friends: walk the submodule in place."""
        subs = [i for i, a in enumerate(node.args) if isinstance(a, Node) and a.op == "get_attr"]
        if not subs:
            return []
        sub = getattr(self.root, node.args[subs[0]].target)
        outer = [self.refs.get(a) if isinstance(a, Node) else None for a in node.args[subs[0] + 1 :]]
        for ph, ref in zip((n for n in sub.graph.nodes if n.op == "placeholder"), outer, strict=False):
            self.refs[ph] = ref
        return self.walk(sub, module)

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name, i = f"{base}__{i}", i + 1
        self.names.add(name)
        return name


def _module_of(node: Node, module_types: dict[str, str]) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = ""
    for p, t in stack.values():
        path = p
        if p not in module_types:
            type_name = t if isinstance(t, str) else getattr(t, "__qualname__", str(t))
            module_types[p] = type_name.rsplit(".", 1)[-1]
    return path
