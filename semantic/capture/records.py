"""What both capture paths produce: one record per tensor op, plus the inputs and parameters it read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class ParamRef:
    """A parameter or buffer (or a view of one) flowing into an op; views of weights are folded into it."""

    name: str


@dataclass(frozen=True, slots=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    itemsize: int

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.itemsize

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorInfo:
        return cls(tuple(int(s) for s in t.shape), str(t.dtype).removeprefix("torch."), t.element_size())


@dataclass(slots=True)
class OpRecord:
    name: str
    target: str  # "aten.linear.default"
    op: str  # "linear"
    inputs: list[str]  # producer records or graph inputs, in argument order
    params: list[str]  # parameters/buffers read directly
    arg_shapes: list[tuple[int, ...]]  # every tensor argument (activations and params), in argument order
    outputs: list[TensorInfo]
    module: str  # innermost module path, "" for the root
    consts: dict[str, Any] = field(default_factory=dict)  # small scalar args: is_causal, dims, exponents


@dataclass(slots=True)
class Captured:
    method: str  # "export" or "dispatch"
    records: list[OpRecord]
    inputs: dict[str, TensorInfo]  # user inputs by name, in call order
    params: dict[str, TensorInfo]
    buffers: set[str]  # names in `params` that are buffers, not trainable weights
    outputs: list[str]  # records (or inputs) returned by forward
    module_types: dict[str, str]  # module path -> class name
    notes: list[str] = field(default_factory=list)  # what the capture had to work around


def weight_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter/buffer name -> the first name of the same tensor (tied weights share one entry)."""
    first: dict[int, str] = {}
    aliases = {}
    named = (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
    for name, t in named:
        aliases[name] = first.setdefault(id(t), name)
    return aliases


def scalar_consts(args: tuple, kwargs: dict) -> dict[str, Any]:
    """Keep the small scalar arguments matchers look at (is_causal, softmax dim, pow exponent)."""
    out: dict[str, Any] = {}
    for i, a in enumerate(args):
        if isinstance(a, (bool, int, float)) or (isinstance(a, (list, tuple)) and len(a) <= 8 and _scalars(a)):
            out[f"arg{i}"] = list(a) if isinstance(a, (list, tuple)) else a
    for k, v in kwargs.items():
        if isinstance(v, (bool, int, float)):
            out[k] = v
    return out


def _scalars(seq: list | tuple) -> bool:
    return all(isinstance(x, (bool, int, float)) for x in seq)
