"""`with genie.capture():` (seed 004's context manager): torch factory functions called inside it, with no
device of their own, make tensors on the genie device. Per thread, and nested: leaving an inner capture()
leaves the outer one active.

The factories are wrapped once, on the first capture(); outside a capture (or in another thread) a wrapped
factory costs one thread-local read and calls the original. Only factories are wrapped, so the ops a capture
records pay nothing for it.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .device import device

FACTORIES = ("randn", "rand", "randint", "randperm", "normal", "zeros", "ones", "empty", "full", "arange",
             "linspace", "eye", "tensor", "as_tensor", "empty_strided", "scalar_tensor")
_state = threading.local()
_wrap_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}


@dataclass(slots=True)
class Capture:
    """One active capture() block; `depth` is 1 for the outermost one of its thread."""

    depth: int


def is_capturing() -> bool:
    return getattr(_state, "depth", 0) > 0


@contextmanager
def capture() -> Iterator[Capture]:
    """Factory calls inside make genie tensors; ops on them are recorded and run on a worker on demand."""
    device()
    _wrap_factories()
    depth = getattr(_state, "depth", 0) + 1
    _state.depth = depth
    try:
        yield Capture(depth)
    finally:
        _state.depth = depth - 1


def _wrap_factories() -> None:
    if _originals:
        return
    with _wrap_lock:
        if _originals:
            return
        for name in FACTORIES:
            original = getattr(torch, name, None)
            if original is not None:
                _originals[name] = original
                setattr(torch, name, _wrapper(original))


def _wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def factory(*args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "depth", 0) and kwargs.get("device") is None and \
                not any(isinstance(a, torch.Tensor) for a in args):
            kwargs["device"] = device()
        return original(*args, **kwargs)

    factory.__wrapped_by_genie__ = True  # type: ignore[attr-defined]
    return factory
