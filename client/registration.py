"""genie.remote's model in the registry: registered on its first call, analysed once, its profile read back.

The model is registered as a `py:` version (registry/factory.py) whose factory hands over the live module:
its weights and example inputs are written as safetensors and content-hashed like any other version, so a
second process with the same weights finds that version (the registry recognises the content hash) and
reads its stored profile without analysing again (Registry.analysis_counts stays at one).

The example inputs are zeros shaped as the first call's tensors with the dimensions genie.remote marks
dynamic set to fixed sizes (batch 1; an integer [batch, seq] tensor [1, 8]), so that any batch size or
prompt length names the same version. The registry is the one $GENIE_REGISTRY_URL / $GENIE_HOME name, as
for genie-models. A version registered this way cannot be analysed again without the live module: its
factory says so.
"""

from __future__ import annotations

import inspect
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from genie.errors import InvalidRequest

if TYPE_CHECKING:
    from genie.semantic import Profile

FACTORY = "genie.client.registration:live_model"
EXAMPLE_SEQ = 8  # positions of an integer [batch, seq] example input
_handed = threading.local()  # the (module, example inputs) register() is importing on this thread


@dataclass(frozen=True, slots=True)
class Registered:
    ref: str  # name:version in the registry
    content_hash: str
    profile: Profile


def live_model() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The `py:` factory of versions genie.remote registers: the module being registered on this thread."""
    handed = getattr(_handed, "model", None)
    if handed is None:
        raise InvalidRequest("this version was registered by genie.remote from a live module; only genie.remote "
                             "on that module can analyse it again")
    return handed


def register(model: torch.nn.Module, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Registered:
    """Registers `model` (or finds it registered, by content) and returns its profile from the registry."""
    from genie.registry.store import Registry

    inputs = example_inputs(model, args, kwargs)
    with Registry.open() as reg:
        _handed.model = (model, inputs)
        try:
            record = reg.register(name, f"py:{FACTORY}", progress=False)
        finally:
            _handed.model = None
        return Registered(record.ref, record.content_hash, reg.get_profile(record))


def example_inputs(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The first call's tensor arguments by parameter name, as zeros at fixed batch and sequence sizes."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise InvalidRequest(f"genie.remote cannot name the arguments of {type(model).__name__}.forward: "
                             f"{exc}") from None
    return {key: _example(value) for key, value in bound.items() if isinstance(value, torch.Tensor)}


def _example(value: torch.Tensor) -> torch.Tensor:
    shape = list(value.shape)
    if shape:
        shape[0] = 1
    if len(shape) == 2 and not value.dtype.is_floating_point:
        shape[1] = EXAMPLE_SEQ
    return torch.zeros(shape, dtype=value.dtype)


def default_name(model: torch.nn.Module) -> str:
    """A registry name from the model's class: GPT2LMHeadModel -> remote-gpt2lmheadmodel."""
    return "remote-" + re.sub(r"[^a-z0-9._-]", "-", type(model).__name__.lower())[:100]
