"""Graph capture without weights: torch.export on meta/fake tensors, with a dispatch-mode fallback.

`capture(model, example_inputs)` returns the graph IR described in `capture.ir`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import networkx as nx
import torch
from torch import nn

from genie.semantic.capture.dispatch import dispatch_capture
from genie.semantic.capture.export import export_capture
from genie.semantic.capture.ir import OUTPUT, build_graph, op_nodes

Graph = nx.DiGraph
log = logging.getLogger(__name__)

__all__ = ["OUTPUT", "Graph", "capture", "op_nodes", "split_inputs"]


def capture(model: nn.Module, example_inputs: tuple | list | dict[str, Any] | torch.Tensor) -> Graph:
    """Trace `model` on `example_inputs` (positional args or kwargs, as you would call `model(...)`).

    Weights are never read: the model may live on the meta device. HF models are traced with use_cache=False.
    Raises TypeError for a non-module or unsupported inputs, ValueError when the model cannot be traced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = split_inputs(model, example_inputs)
    was_training = model.training
    model.eval()  # trace inference: no dropout, batch norm uses its running statistics
    try:
        try:
            cap = export_capture(model, args, kwargs)
        except Exception as export_error:  # noqa: BLE001 - any export failure gets the second path
            log.info("torch.export failed for %s (%s); tracing with the dispatch-mode fallback",
                     type(model).__name__, _first_line(export_error))
            cap = _fallback(model, args, kwargs, export_error)
    finally:
        model.train(was_training)
    return build_graph(cap, type(model).__name__)


def split_inputs(model: nn.Module, example_inputs: Any) -> tuple[tuple, dict[str, Any]]:
    """Normalise inputs to (args, kwargs) on the model's device; add use_cache=False for HF models."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        if not all(isinstance(k, str) for k in example_inputs):
            raise TypeError("example_inputs as a dict must map argument names (str) to values")
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise TypeError(
            "example_inputs must be a tuple of positional arguments or a dict of keyword arguments "
            f"(as you would pass to model(...)), got {type(example_inputs).__name__}"
        )
    if not any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
        raise ValueError("example_inputs holds no tensor; pass at least one example tensor, e.g. (torch.zeros(1, 16),)")
    device = _param_device(model)
    args = tuple(_to_device(a, device) for a in args)
    kwargs = {k: _to_device(v, device) for k, v in kwargs.items()}
    if "use_cache" in inspect.signature(model.forward).parameters and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # no KV cache objects in the trace; the KV pattern is found structurally
    return args, kwargs


def _fallback(model: nn.Module, args: tuple, kwargs: dict, export_error: Exception) -> Any:
    try:
        cap = dispatch_capture(model, args, kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised as a user-facing ValueError below
        raise ValueError(
            f"could not trace {type(model).__name__}: its forward failed on the example inputs with "
            f"{type(error).__name__}: {_first_line(error)}. Check that example_inputs match what model(...) "
            f"expects (argument names, shapes, dtypes) and that model(*args, **kwargs) runs."
        ) from error
    cap.notes.append(f"torch.export failed ({type(export_error).__name__}: {_first_line(export_error)}); "
                     "traced with the dispatch-mode fallback")
    return cap


def _param_device(model: nn.Module) -> torch.device | None:
    """Where the example inputs must live: meta if any weight is on meta (a skeleton), else the weights' device."""
    devices = [t.device for t in (*model.parameters(), *model.buffers())]
    if any(d.type == "meta" for d in devices):
        return torch.device("meta")
    return devices[0] if devices else None


def _to_device(value: Any, device: torch.device | None) -> Any:
    if not isinstance(value, torch.Tensor) or device is None or value.device == device:
        return value
    if device.type == "meta":
        return torch.empty_like(value, device="meta")
    if value.device.type == "meta":
        return torch.zeros(value.shape, dtype=value.dtype, device=device)  # example values only shape the trace
    return value.to(device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
