"""genie.remote(model): the module's forward runs on genie workers through the "genie" backend.

All the graphs of one remote model are placed on one worker (a placement key per call of remote), so that
outputs one graph keeps there can feed the next. For a decoder LLM (client/residency.py) the KV cache is kept:
`generate` then moves token ids and logits per step, never the cache.

The model comes back as a shallow copy whose forward is the compiled one (parameters shared with the
original), because HF generate calls `self(...)`. Batch and sequence dimensions of the inputs are marked
dynamic before Dynamo sees them (dim 0 of every tensor, dim 1 of integer [batch, seq] tensors), so a new
batch size or prompt length does not recompile the graph; the program format has no symbolic sizes, so each
new shape still lowers a program of its own, counted in genie.client.report()["programs"].

On its first call the model is registered in the registry (client/registration.py: analysed once, found by
content in any later process) and its semantic profile read back. What the client path uses of the profile:
the workload type and, for an LLM, its KV shape (heads, head size), which decide the outputs kept on the
worker. Its plans (replicas, branch-parallel, pipeline) are not used: all of a model's graphs run on one
worker. A model the analyser cannot profile, or a registry that cannot be opened, leaves it running, with a
warning and nothing kept on the worker.
"""

from __future__ import annotations

import copy
import functools
import uuid
import warnings
from typing import Any

import torch

from genie.errors import GenieError, InvalidRequest

from . import registration
from .backend import genie_backend
from .residency import Deferred, for_model, for_profile
from .session import Session


class RegistrationWarning(UserWarning):
    """genie.remote could not register the model or read its profile; it runs without the profile."""


def remote(model: torch.nn.Module, session: Session | None = None, *, keep_kv: bool = True,
           register: bool = True, name: str | None = None) -> torch.nn.Module:
    """torch.compile(model, backend="genie") bound to `session` (default: genie.connect's). Weights are sent
    once, on the first call of each graph. The first call registers the model in the registry as `name`
    (default: remote-<class name>) and applies its profile; `register=False` skips the registry and reads a
    decoder's KV shape from its HF config. `keep_kv=False` ships a decoder's KV cache with every step (needed
    for beam search, which reorders the cache here)."""
    policy = Deferred()
    backend = functools.partial(genie_backend, session=session, residency=policy,
                                placement=f"remote-{uuid.uuid4().hex}")
    clone = copy.copy(model)
    first = FirstCall(model, policy, keep_kv, register, name or registration.default_name(model))
    clone.forward = _marking_dynamic(torch.compile(model.forward, backend=backend), first)
    clone.registered = None  # registration.Registered after the first call, when registered
    first.clone = clone
    if keep_kv and callable(getattr(model, "generate", None)):
        clone.generate = functools.partial(_generate, clone, first)
    return clone


class FirstCall:
    """Registers the model and resolves its residency policy, once, before its first graph compiles."""

    def __init__(self, model: torch.nn.Module, policy: Deferred, keep_kv: bool, register: bool, name: str) -> None:
        self.model, self.policy, self.keep_kv, self.register, self.name = model, policy, keep_kv, register, name
        self.clone: torch.nn.Module | None = None
        self.done = False

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.done:
            return
        self.done = True
        if not self.register:
            self.policy.policy = for_model(self.model) if self.keep_kv else None
            return
        try:
            registered = registration.register(self.model, self.name, args, kwargs)
        except Exception as exc:  # an unreachable registry or a refused analysis: the model still runs
            why = str(exc) if isinstance(exc, GenieError) else f"{type(exc).__name__}: {exc}"
            warnings.warn(f"genie.remote could not register {self.name!r} in the registry ({why[:300]}); it runs "
                          "on genie without its semantic profile, so no output stays on the worker",
                          RegistrationWarning, stacklevel=3)
            return
        self.clone.registered = registered  # type: ignore[union-attr]
        self.policy.policy = for_profile(registered.profile, self.model) if self.keep_kv else None


def _marking_dynamic(compiled: Any, first: FirstCall) -> Any:
    @functools.wraps(compiled)
    def forward(*args: Any, **kwargs: Any) -> Any:
        first(args, kwargs)
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor) and value.ndim:
                torch._dynamo.maybe_mark_dynamic(value, 0)
                if value.ndim == 2 and not value.dtype.is_floating_point:
                    torch._dynamo.maybe_mark_dynamic(value, 1)
        return compiled(*args, **kwargs)

    return forward


def _generate(clone: torch.nn.Module, first: FirstCall, *args: Any, **kwargs: Any) -> Any:
    first(args[:1], {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})  # the profile decides
    config = kwargs.get("generation_config") or getattr(clone, "generation_config", None)
    beams = kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1
    if beams > 1 and first.policy.policy is not None:
        raise InvalidRequest("genie.remote keeps this model's KV cache on the worker, and beam search reorders "
                             "the cache on the client: use genie.remote(model, keep_kv=False) for beam search")
    return type(clone).generate(clone, *args, **kwargs)
