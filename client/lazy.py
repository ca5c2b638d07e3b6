"""Tensors on the `genie` device: each ATen op is recorded, not run, and not shape-checked one by one.

A GenieTensor is a wrapper subclass (no storage) whose `_n` is the Node that makes it. Its metadata (shape,
strides, dtype) comes from a cache keyed by (op, input metadata, other arguments): the first time a signature
is seen its op runs once on meta tensors; after that a record costs a dict lookup. Nodes point at their input
Nodes, not at tensors, so a node whose tensor is gone stays in the graph but is not fetched when it runs.

What runs where: ops on the worker's allowlist are recorded; RNG ops run here (so torch.manual_seed gives the
same numbers as on the CPU); any other op, or one whose output shape depends on the data, runs here on its
materialised inputs, with a GenieFallbackWarning naming it. In-place ops are recorded as their functional
form, and the mutated tensor is rebound to the new node.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch

from .backend import GenieFallbackWarning
from .errors import AutogradOutOfScope

MAX_SIGNATURES = 100_000  # metadata cache entries before it starts again
GETITEM = "getitem"
VIEW_LEAF = "view-leaf"  # the op of a computed node that was a view
RNG_WORDS = ("normal", "uniform", "random", "bernoulli", "exponential", "cauchy", "geometric", "rand",
             "multinomial", "poisson", "log_normal")
_graph_task_id = torch._C._current_graph_task_id


class GenieUnsupported(RuntimeError):
    """Something the genie device does not do (yet): the message says what to write instead."""


class Node:
    """One recorded op (or a leaf holding a CPU value). `value` is set once it has been computed."""

    __slots__ = ("op", "args", "kwargs", "value", "ref", "meta", "mkey", "resident", "views")

    def __init__(self, op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meta: tuple[Any, ...] | None,
                 mkey: int = -1) -> None:
        self.op = op  # an OpOverload, GETITEM (args: node, index), or None for a leaf
        self.args = args  # input Nodes in place of genie tensors; plain CPU tensors stay (weights, by sha256)
        self.kwargs = kwargs
        self.value: torch.Tensor | None = None
        self.ref: weakref.ref[GenieTensor] | None = None  # the tensor it makes, while it lives
        self.meta = meta  # (shape, stride, dtype, storage_offset)
        self.mkey = mkey if mkey >= 0 or meta is None else meta_key(meta)  # meta as a small int, for cache keys
        self.resident = False  # a leaf from an nn.Parameter (module.to("genie")): a weight, bound once by sha256
        self.views: list[weakref.ref[GenieTensor]] | None = None  # tensors that alias this node's value


class Spec:
    """What the cache knows about one op signature."""

    __slots__ = ("metas", "mkeys", "multi", "inplace", "functional", "view", "mode")

    def __init__(self, metas: Any, multi: bool, inplace: bool, functional: Any, view: bool, mode: str) -> None:
        self.metas = metas  # one meta tuple, or a list of them when the op returns several tensors
        self.mkeys = None if metas is None else [meta_key(m) for m in metas] if multi else meta_key(metas)
        self.multi = multi
        self.inplace = inplace  # mutates args[0]: rebind it
        self.functional = functional  # the op to record (the functional form of an in-place op)
        self.view = view  # the output aliases args[0]
        self.mode = mode  # "record", "local" (runs here, warned), "rng" (runs here, silently)


_SPECS: dict[tuple[Any, ...], Spec] = {}
# A meta tuple -> a small int, so a signature key is a tuple of ints (OpOverload and nested tuples hash slowly).
# Never cleared: live nodes hold these numbers.
_MKEYS: dict[tuple[Any, ...], int] = {}
_PLAIN: set[int] = set()  # meta keys of contiguous tensors at offset 0
_make_wrapper = torch.Tensor._make_wrapper_subclass
_SPECIAL: dict[int, Any] = {}  # id(op) -> handler: ops that materialise or move data; filled by lazy_ops.py
DEVICE: torch.device | None = None  # set by device.register()


class GenieTensor(torch.Tensor):
    __slots__ = ("_n",)  # its Node
    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        special = _SPECIAL.get(id(func))
        if special is not None:
            return special(func, args, kwargs or {})
        return record(func, args, kwargs)

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        from .lazy_ops import materialise

        text = repr(materialise([self._n])[0])
        return text[:-1] + f", device='{self.device}')" if text.endswith(")") else text

    def numpy(self, *, force: bool = False) -> Any:
        from .lazy_ops import materialise

        return materialise([self._n])[0].clone().numpy()

    def tolist(self) -> Any:
        from .lazy_ops import materialise

        return materialise([self._n])[0].tolist()

    def cpu(self, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
        return _fetched(self, None)

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        to_device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if to_device is not None and to_device.type != DEVICE.type:
            return _fetched(self, dtype)
        return super().to(*args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> None:
        raise _no_backward()


def _fetched(t: GenieTensor, dtype: torch.dtype | None) -> torch.Tensor:
    """t's value as a new CPU tensor. Autograd must not follow it back onto the genie device (whose ops it
    cannot run), so when t requires grad the copy's grad_fn refuses backward() with a clear error."""
    from .backend import _NoBackward
    from .lazy_program import materialise

    (value,) = materialise([t._n])
    out = value.to(dtype) if dtype is not None and dtype != value.dtype else value
    if t.requires_grad and torch.is_grad_enabled():
        return _NoBackward.apply(_anchor(), out)  # a clone, whose backward raises AutogradOutOfScope
    return out.clone()


def _anchor() -> torch.Tensor:
    global _ANCHOR
    if _ANCHOR is None:
        _ANCHOR = torch.zeros((), device="cpu", requires_grad=True)
    return _ANCHOR


_ANCHOR: torch.Tensor | None = None


def record(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
    """The hot path: one dict lookup for the op's signature, one Node, one wrapper tensor."""
    if _graph_task_id() != -1:
        raise _no_backward()
    key = [id(func)]  # OpOverloads live as long as torch.ops
    nargs = []
    for a in args:
        t = type(a)
        if t is GenieTensor:
            key.append(a._n.mkey)
            nargs.append(a._n)
        elif t is list or t is tuple:
            k, n = _seq(a)
            key.append(k)
            nargs.append(n)
        elif isinstance(a, torch.Tensor):
            key.append(_const_key(a))
            nargs.append(a)
        else:
            key.append((t, a))
            nargs.append(a)
    nkwargs = kwargs
    if kwargs:
        nkwargs, kkey = _kwargs(kwargs)
        key.append(kkey)
    else:
        kwargs = nkwargs = {}
    key = tuple(key)
    try:
        spec = _SPECS.get(key)
    except TypeError:  # an argument that does not hash (a nested list): learn it, without a cache entry
        key, spec = None, None
    if spec is None:
        spec = _learn(key, func, args, kwargs)
    if spec.mode != "record" or (spec.inplace and type(args[0]) is not GenieTensor):
        from .lazy_ops import run_here

        return run_here(func, args, kwargs, spec.mode)
    if spec.inplace:
        return _rebind(args[0], Node(spec.functional, tuple(nargs), nkwargs, None))
    node = Node(func, tuple(nargs), nkwargs, None)
    if spec.multi:
        out = _outputs(node, spec)
        if spec.view:
            _viewed(args[0], out)
        return out
    node.meta = spec.metas
    node.mkey = spec.mkeys
    out = wrap(node)
    if spec.view:
        _viewed(args[0], [out])
    return out


def _viewed(base: Any, views: list[GenieTensor]) -> None:
    if type(base) is GenieTensor:
        node = base._n
        node.views = (node.views or []) + [weakref.ref(v) for v in views]


def wrap(node: Node) -> GenieTensor:
    shape, stride, dtype, offset = node.meta
    if node.mkey in _PLAIN:  # contiguous from offset 0: torch's defaults, fewer arguments to parse
        t = _make_wrapper(GenieTensor, shape, dtype=dtype, device=DEVICE)
    else:
        t = _make_wrapper(GenieTensor, shape, strides=stride, dtype=dtype, device=DEVICE, storage_offset=offset)
    t._n = node
    node.ref = weakref.ref(t)
    return t


def leaf(value: torch.Tensor) -> GenieTensor:
    """A genie tensor whose value is known here: it travels as a program input when a program reads it."""
    node = Node(None, (), {}, meta_of(value))
    node.value = value
    return wrap(node)


def meta_key(meta: tuple[Any, ...]) -> int:
    key = _MKEYS.get(meta)
    if key is None:
        key = _MKEYS.setdefault(meta, len(_MKEYS))
        shape, stride, _, offset = meta
        if offset == 0 and tuple(stride) == _contiguous(shape):
            _PLAIN.add(key)
    return key


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def meta_of(t: torch.Tensor) -> tuple[Any, ...]:
    return tuple(t.shape), t.stride(), t.dtype, t.storage_offset()


def _outputs(node: Node, spec: Spec) -> list[GenieTensor]:
    return [wrap(Node(GETITEM, (node, i), {}, meta, mkey)) for i, (meta, mkey) in enumerate(zip(spec.metas,
                                                                                             spec.mkeys))]


def _rebind(target: GenieTensor, node: Node) -> GenieTensor:
    """An in-place op: the tensor the user holds now stands for the new node (same shape and dtype). Recorded
    functionally, so it is refused when another live tensor shares the written memory (a view of it, or what
    it is a view of): that tensor would not see the write."""
    if _shares_memory_with_a_live_tensor(target):
        raise GenieUnsupported(
            "genie: an in-place op writes a genie tensor that shares memory with another live tensor (x[...], "
            "view, transpose...); the genie device records ops lazily and cannot see writes through views yet. "
            "Write it out of place: y = x.add(1) instead of x.add_(1)."
        )
    node.meta = target._n.meta
    node.mkey = target._n.mkey
    target._n = node
    node.ref = weakref.ref(target)
    return target


def _seq(items: Any) -> tuple[tuple[Any, ...], list[Any]]:
    keys, nodes = [], []
    for a in items:
        if type(a) is GenieTensor:
            keys.append(a._n.mkey)
            nodes.append(a._n)
        elif isinstance(a, torch.Tensor):
            keys.append(_const_key(a))
            nodes.append(a)
        else:
            keys.append((type(a), a))
            nodes.append(a)
    return tuple(keys), nodes


def _kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    out, keys = {}, []
    for name, a in kwargs.items():
        if type(a) is GenieTensor:
            keys.append((name, a._n.mkey))
            out[name] = a._n
        elif isinstance(a, torch.Tensor):
            keys.append((name, _const_key(a)))
            out[name] = a
        elif type(a) is list:
            k, n = _seq(a)
            keys.append((name, k))
            out[name] = n
        else:
            keys.append((name, type(a), a))
            out[name] = a
    return out, tuple(keys)


def _const_key(t: torch.Tensor) -> tuple[Any, ...]:
    if t.device.type != "cpu":
        raise GenieUnsupported(f"genie: an op mixes a genie tensor with a tensor on {t.device}; move it with "
                               ".cpu() or .to('genie') first")
    return ("cpu",) + meta_of(t)


def _shares_memory_with_a_live_tensor(target: GenieTensor) -> bool:
    node = target._n
    if _alive(node.views, target):
        return True
    while made_by_view(node):
        if not node.args:  # a fetched view: what it aliased is no longer known
            return True
        base = node.args[0].args[0] if node.op is GETITEM else node.args[0]
        if type(base) is not Node or (base.ref is not None and base.ref() is not None) or _alive(base.views, target):
            return True
        node = base
    return False


def _alive(refs: list[weakref.ref[GenieTensor]] | None, other_than: GenieTensor) -> bool:
    return any(r() is not None and r() is not other_than for r in refs or ())


def made_by_view(node: Node) -> bool:
    """Whether the node's tensor aliases another one (a leaf remembers it as VIEW_LEAF)."""
    op = node.op
    if op is GETITEM and node.args:
        op = node.args[0].op
    return op is VIEW_LEAF or (op is not None and op is not GETITEM and _is_view(op))


def _is_view(op: Any) -> bool:
    returns = op._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write


def _learn(key: tuple[Any, ...] | None, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Spec:
    """A signature seen for the first time: run the op on meta tensors once, and decide how it runs."""
    from .lazy_ops import allowed, functional_of, to_meta

    name = func.name().split("::")[-1]
    inplace = bool(func._schema.returns) and func._schema.returns[0].alias_info is not None and \
        func._schema.returns[0].alias_info.is_write and "out" not in kwargs
    functional = functional_of(func) if inplace else func
    if any(word in name for word in RNG_WORDS):
        spec = Spec(None, False, inplace, functional, False, "rng")
    elif functional is None or not allowed(functional):
        shown = func if functional is None else functional
        warnings.warn(f"genie: {shown} is not on the workers' allowlist of torch.ops, so it runs here (eager) "
                      "on its inputs, fetched from the worker", GenieFallbackWarning, stacklevel=4)
        spec = Spec(None, False, inplace, functional, False, "local")
    else:
        try:
            out = func(*to_meta(args), **to_meta(kwargs))
        except Exception as exc:  # noqa: BLE001 - a data-dependent shape, or an op with no meta kernel
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            warnings.warn(f"genie: {func} runs here (eager) on its inputs, fetched from the worker: its output "
                          f"cannot be sized without the data ({first})", GenieFallbackWarning, stacklevel=4)
            spec = Spec(None, False, inplace, functional, False, "local")
        else:
            multi = isinstance(out, (list, tuple))
            if not (multi and all(isinstance(o, torch.Tensor) for o in out)) and not isinstance(out, torch.Tensor):
                spec = Spec(None, False, inplace, functional, False, "local")
            else:
                metas = [meta_of(o) for o in out] if multi else meta_of(out)
                spec = Spec(metas, multi, inplace, functional, (not inplace) and _is_view(func), "record")
    if len(_SPECS) >= MAX_SIGNATURES:
        _SPECS.clear()
    if key is not None:
        _SPECS[key] = spec
    return spec


def _no_backward() -> AutogradOutOfScope:
    return AutogradOutOfScope(
        "backward() reached a tensor on the genie device; autograd through remote graphs is out of scope "
        "(genie runs inference). Run the training step on the CPU, or wrap inference in torch.no_grad()."
    )
