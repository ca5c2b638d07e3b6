"""The genie device's ops that are not simply recorded: those that need values (.cpu(), .item(), bool()),
copies between the CPU and the device, and ops that run here on materialised inputs."""

from __future__ import annotations

from typing import Any

import torch

from . import lazy
from .lazy import GenieTensor, GenieUnsupported, Node, leaf, record
from .lazy_program import materialise

aten = torch.ops.aten
_ALLOWED: frozenset[str] | None = None


def allowed(op: Any) -> bool:
    """On the workers' allowlist (genie.workers.programs.allowlist, the contract a worker checks)."""
    global _ALLOWED
    if _ALLOWED is None:
        from genie.workers.programs.allowlist import ALLOWED_OPS

        _ALLOWED = ALLOWED_OPS
    return str(op) in _ALLOWED


def functional_of(op: Any) -> Any:
    """aten.add_.Tensor -> aten.add.Tensor; None when the in-place op has no functional twin."""
    packet, _, overload = op.name().split("::")[-1].partition(".")
    packet_obj = getattr(aten, packet.rstrip("_"), None) if packet.endswith("_") else None
    return getattr(packet_obj, overload or "default", None) if packet_obj is not None else None


def to_meta(value: Any) -> Any:
    """Arguments for a shape-only run: tensors become meta tensors of the same layout; devices become meta."""
    if isinstance(value, torch.Tensor):
        shape, stride, dtype, offset = value._n.meta if type(value) is GenieTensor else lazy.meta_of(value)
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta").as_strided(shape, stride, offset) \
            if offset else torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    if isinstance(value, torch.device):
        return torch.device("meta")
    if isinstance(value, (list, tuple)):
        return type(value)(to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


def _values(value: Any, known: dict[int, torch.Tensor]) -> Any:
    if type(value) is GenieTensor:
        return known[id(value._n)]
    if isinstance(value, torch.device) and value.type == lazy.DEVICE.type:
        return torch.device("cpu")
    if isinstance(value, (list, tuple)):
        return type(value)(_values(v, known) for v in value)
    if isinstance(value, dict):
        return {k: _values(v, known) for k, v in value.items()}
    return value


def _genie_nodes(value: Any, found: list[Node]) -> list[Node]:
    if type(value) is GenieTensor:
        found.append(value._n)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _genie_nodes(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _genie_nodes(v, found)
    return found


def run_here(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], mode: str) -> Any:
    """Materialises the op's genie inputs (one program for all of them), runs it on the CPU, and hands back
    genie tensors holding the results (they travel as inputs of later programs)."""
    nodes = _genie_nodes(list(args) + list(kwargs.values()), [])
    known = {id(n): v for n, v in zip(nodes, materialise(nodes))}
    inplace = func._schema.returns and func._schema.returns[0].alias_info is not None and \
        func._schema.returns[0].alias_info.is_write
    if inplace and type(args[0]) is GenieTensor:
        known[id(args[0]._n)] = known[id(args[0]._n)].clone()  # its value may be another node's too
    with torch.no_grad():
        out = func(*_values(args, known), **_values(kwargs, known))
    if inplace and type(args[0]) is not GenieTensor:
        return out  # a CPU tensor written with genie operands: it stays the caller's CPU tensor
    if inplace:
        target = args[0]
        fresh = Node(None, (), {}, target._n.meta)
        fresh.value = out
        return lazy._rebind(target, fresh)
    return _wrap_outputs(out)


def _wrap_outputs(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return leaf(out)
    if isinstance(out, (list, tuple)):
        return type(out)(_wrap_outputs(o) for o in out)
    return out


def _to_copy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    device = kwargs.get("device")
    if device is not None and torch.device(device).type != lazy.DEVICE.type:
        (value,) = materialise([args[0]._n])
        return func(value, **kwargs)  # a copy: the caller may write into it
    return record(func, args, kwargs)


def _copy_(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    dst, src = args[0], args[1]
    if type(dst) is not GenieTensor:  # cpu_tensor.copy_(genie_tensor)
        (value,) = materialise([src._n])
        return dst.copy_(value)
    if type(src) is GenieTensor:
        return record(func, args, kwargs)
    return copy_into(dst, src)


def copy_into(dst: GenieTensor, src: torch.Tensor) -> GenieTensor:
    """dst (genie) takes a CPU tensor's values."""
    shape, stride, dtype, _ = dst._n.meta
    fresh = Node(None, (), {}, dst._n.meta)  # .to("genie"): the bytes go with the next program that reads it
    with torch.no_grad():
        fresh.value = torch.empty_strided(shape, stride, dtype=dtype, device="cpu").copy_(src)
    fresh.resident = isinstance(src, torch.nn.Parameter)
    return lazy._rebind(dst, fresh)


def _scalar(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    (value,) = materialise([args[0]._n])
    return func(value)


def _equal(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    nodes = _genie_nodes(list(args), [])
    known = {id(n): v for n, v in zip(nodes, materialise(nodes))}
    return func(*_values(args, known))


def _zero_(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return aten.fill_.Scalar(args[0], 0)


def _lift_fresh(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0]  # torch.tensor(data) marks its fresh result; on the genie device it is that tensor


def _detach(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """nn.Parameter(genie_tensor) detaches it: a known value stays a known value (and a weight stays one)."""
    node = args[0]._n
    if node.value is None:
        return record(func, args, kwargs)
    out = leaf(node.value)
    out._n.resident = node.resident
    out._n.op = lazy.VIEW_LEAF
    lazy._viewed(args[0], [out])
    return out


def _refuse(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise GenieUnsupported(f"genie: {func} changes a genie tensor's storage, which the genie device does not "
                           "have; make a new tensor instead")


def install() -> None:
    lazy._SPECIAL.update({id(op): handler for op, handler in {
        aten._to_copy.default: _to_copy, aten.copy_.default: _copy_, aten._local_scalar_dense.default: _scalar,
        aten.is_nonzero.default: _scalar, aten.equal.default: _equal, aten.zero_.default: _zero_,
        aten.lift_fresh.default: _lift_fresh, aten.detach.default: _detach, aten.alias.default: _detach,
        aten.resize_.default: _refuse, aten.set_.source_Tensor: _refuse, aten.set_.source_Storage: _refuse,
    }.items()})
