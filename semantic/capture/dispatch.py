"""Fallback capture: run forward once under a TorchDispatchMode and record every aten op it dispatches.

Used when torch.export refuses a model (data-dependent control flow, untraceable Python). Tensors are
FakeTensors, so nothing is computed and no weights are read. A `.item()` / `bool()` on a tensor cannot be answered
without data: it is answered with 0 / False and the trace follows that branch, which the notes say. An op whose
output shape depends on the data (nonzero, boolean-mask indexing) is traced at its upper bound.
Module paths come from forward pre/post hooks.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from genie.semantic.capture.ops import op_kind, op_name
from genie.semantic.capture.records import Captured, OpRecord, ParamRef, TensorInfo, scalar_consts

_SCALAR_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero"})


def dispatch_capture(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Captured:
    recorder = _Recorder(Captured("dispatch", [], {}, {}, set(), [], {}))
    recorder.bind_weights(model)
    recorder.bind_inputs(model, args, kwargs)
    hooks = _module_hooks(model, recorder)
    try:
        # Weights and inputs (real or meta) become FakeTensors as ops touch them: shapes only, no compute.
        with FakeTensorMode(allow_non_fake_inputs=True), recorder, torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    recorder.cap.outputs = [r for r in map(recorder.ref, _tensors(out)) if isinstance(r, str)]
    if recorder.guessed:
        recorder.cap.notes.append(
            f"{recorder.guessed} data-dependent value(s) (.item() / bool(tensor)) were unknown while tracing "
            "and taken as 0 / False; the graph follows that branch"
        )
    if recorder.bounded:
        recorder.cap.notes.append(
            f"{recorder.bounded} op(s) with a data-dependent output shape (nonzero, boolean-mask indexing) were "
            "traced at their upper bound: every element selected"
        )
    return recorder.cap


class _Recorder(TorchDispatchMode):
    def __init__(self, cap: Captured) -> None:
        super().__init__()
        self.cap = cap
        self.bound: dict[int, tuple[torch.Tensor, str | ParamRef]] = {}  # id -> (tensor kept alive, ref)
        self.stack: list[str] = [""]
        self.guessed = 0
        self.bounded = 0

    def bind_weights(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.cap.params[name] = TensorInfo.of(p)
            self.bound[id(p)] = (p, ParamRef(name))
        for name, b in model.named_buffers():
            self.cap.params[name] = TensorInfo.of(b)
            self.cap.buffers.add(name)
            self.bound[id(b)] = (b, ParamRef(name))

    def bind_inputs(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        names = [p for p in _forward_params(model) if p not in kwargs]
        named = list(zip(names, args, strict=False)) + list(kwargs.items())
        for name, value in named:
            for i, t in enumerate(_tensors(value)):
                key = name if i == 0 else f"{name}_{i}"
                self.cap.inputs[key] = TensorInfo.of(t)
                self.bound[id(t)] = (t, key)

    def ref(self, t: torch.Tensor) -> str | ParamRef | None:
        hit = self.bound.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if name in _SCALAR_OPS:
            self.guessed += 1
            return _placeholder(args[0].dtype)
        try:
            out = func(*args, **kwargs)
        except DynamicOutputShapeException:
            out = _upper_bound(name, func, args, kwargs)  # re-raises for ops it cannot bound
            self.bounded += 1
        outs = _tensors(out)
        if not outs:
            return out
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        refs = [self.ref(a) for a in flat]
        live = [r for r in refs if r is not None]
        if op_kind(name) == "view" and live and all(isinstance(r, ParamRef) for r in live):
            self._bind(outs, live[0])  # a view of a weight (w.t(), w.to(dtype)) is the weight
            return out
        rec = OpRecord(
            name=f"{name}_{len(self.cap.records)}",
            target=str(func),
            op=name,
            inputs=[r for r in refs if isinstance(r, str)],
            params=[r.name for r in refs if isinstance(r, ParamRef)],
            arg_shapes=[tuple(int(s) for s in a.shape) for a, r in zip(flat, refs, strict=True) if r is not None],
            outputs=[TensorInfo.of(t) for t in outs],
            module=self.stack[-1],
            consts=scalar_consts(tuple(args), kwargs),
        )
        self.cap.records.append(rec)
        self._bind(outs, rec.name)
        return out

    def _bind(self, outs: list[torch.Tensor], ref: str | ParamRef) -> None:
        for t in outs:
            self.bound[id(t)] = (t, ref)


def _module_hooks(model: nn.Module, recorder: _Recorder) -> list:
    handles = []
    for path, module in model.named_modules():
        recorder.cap.module_types.setdefault(path, type(module).__name__)

        def pre(_m, _a, path=path):
            recorder.stack.append(path)

        def post(_m, _a, _o):
            recorder.stack.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _forward_params(model: nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


def _upper_bound(name: str, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Any:
    """The largest result a data-dependent op can give: as if every element were selected (all true / nonzero)."""
    if name == "nonzero":
        x = args[0]
        return torch.zeros(x.numel(), x.dim(), dtype=torch.long, device=x.device)
    if name == "masked_select":
        x, mask = args[0], args[1]
        return x.new_zeros(torch.broadcast_shapes(x.shape, mask.shape).numel())
    if name == "index" and len(args) > 1:
        indices = []
        for i in args[1]:
            if isinstance(i, torch.Tensor) and i.dtype == torch.bool:
                # a k-dim mask selects up to numel positions: k index vectors of that length
                indices += [torch.zeros(i.numel(), dtype=torch.long, device=i.device)] * i.dim()
            else:
                indices.append(i)
        return func(args[0], indices, **kwargs)
    raise DynamicOutputShapeException(func)


def _placeholder(dtype: torch.dtype) -> bool | int | float:
    if dtype == torch.bool:
        return False
    return 0.0 if dtype.is_floating_point else 0
