"""The `genie` device: torch's PrivateUse1 backend renamed "genie", with Python kernels only.

    genie.device()                       # registers it (first use), returns torch.device("genie:0")
    x = torch.randn(8, 64).to("genie")   # or torch.zeros(..., device="genie"), or inside genie.capture()
    y = torch.relu(x @ w)                # recorded, not run
    print(y.sum().item())                # one program, one RunProgram round trip

Registration uses torch.utils.backend_registration._setup_privateuseone_for_python_backend (rename, device
module, hooks, device guard). Factory kernels (empty, empty_strided, arange) and the CPU -> genie copy are
registered for PrivateUse1; every other op reaches GenieTensor.__torch_dispatch__ (client/lazy.py), because a
genie tensor carries the Python dispatch key.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import torch

NAME = "genie"
_lock = threading.Lock()
_device: torch.device | None = None
_library: Any = None  # the torch.library.Library that holds the factory kernels; kept alive here


def device() -> torch.device:
    """torch.device("genie:0"), registering the backend on first use (idempotent, thread-safe)."""
    global _device
    if _device is None:
        with _lock:
            if _device is None:
                _register()
                _device = torch.device(NAME, 0)
    return _device


def register_if_free() -> None:
    """At `import genie.client`, so that x.to("genie") works from then on; a process whose PrivateUse1 is
    another backend's keeps it, and genie.device() says why it cannot register."""
    try:
        device()
    except RuntimeError:
        pass


def is_genie(t: Any) -> bool:
    from .lazy import GenieTensor

    return type(t) is GenieTensor


def _register() -> None:
    global _library
    from . import lazy, lazy_ops

    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    taken = torch._C._get_privateuse1_backend_name()
    if taken not in ("privateuseone", NAME):
        raise RuntimeError(f"genie: torch's PrivateUse1 backend is {taken!r} in this process, so the genie device "
                           "cannot register; use torch.compile(backend='genie') or genie.remote(model) instead")
    if taken != NAME:
        # torch 2.13's Python-only backend set-up (experimental there): the rename, a device module (torch.genie),
        # hooks, a device guard, and Tensor.genie() / Tensor.is_genie. It refuses if PrivateUse1 is taken.
        _setup_privateuseone_for_python_backend(rename=NAME, backend_module=_device_module())
    lazy.DEVICE = torch.device(NAME, 0)
    lazy_ops.install()
    _guard_autograd()
    _library = torch.library.Library("aten", "IMPL")
    for op in ("empty.memory_format", "empty_strided", "arange", "arange.start", "arange.start_step"):
        _library.impl(op, _factory(op), "PrivateUse1")
    _library.impl("_copy_from", _copy_from, "PrivateUse1")


def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """A CPU -> genie copy that reached the backend kernel (torch.tensor(..., device="genie") does)."""
    from .lazy_ops import copy_into

    return copy_into(dst, src)


def _guard_autograd() -> None:
    """torch.autograd.backward / grad on a genie tensor raise AutogradOutOfScope before the engine starts: the
    engine would run the graph on a thread for the genie device, which a Python-only backend cannot host (the
    process aborts). Other calls pass straight through."""
    from .lazy import GenieTensor, _no_backward

    def guarded(original: Any) -> Any:
        def call(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            items = tensors if isinstance(tensors, (list, tuple)) else (tensors,)
            if any(type(t) is GenieTensor for t in items):
                raise _no_backward()
            return original(tensors, *args, **kwargs)

        call.__doc__, call.__name__, call.__wrapped__ = original.__doc__, original.__name__, original
        return call

    for name in ("backward", "grad"):
        original = getattr(torch.autograd, name)
        if not hasattr(original, "__wrapped__"):
            setattr(torch.autograd, name, guarded(original))


def _device_module() -> types.ModuleType:
    """What torch asks of a device module (torch.genie): one device, always there."""
    module = types.ModuleType(f"torch.{NAME}")
    module.is_available = lambda: True  # type: ignore[attr-defined]
    module.device_count = lambda: 1  # type: ignore[attr-defined]
    module.current_device = lambda: 0  # type: ignore[attr-defined]
    module.is_initialized = lambda: True  # type: ignore[attr-defined]
    module._is_in_bad_fork = lambda: False  # type: ignore[attr-defined]
    module.manual_seed_all = lambda seed: None  # type: ignore[attr-defined]  # RNG runs on the CPU, seeded there
    return module


def _factory(name: str) -> Any:
    """A PrivateUse1 kernel that records the factory op as a node (its shape from a meta run)."""
    packet, _, overload = name.partition(".")
    op = getattr(getattr(torch.ops.aten, packet), overload or "default")

    def kernel(*args: Any, **kwargs: Any) -> Any:
        from .lazy import Node, meta_of, wrap

        meta = op(*args, **{**kwargs, "device": torch.device("meta")})
        return wrap(Node(op, args, kwargs, meta_of(meta)))

    return kernel
