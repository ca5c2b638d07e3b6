"""genie.remote(model): the module's forward runs on genie workers through the "genie" backend.

All the graphs of one remote model are placed on one worker (a placement key per call of remote), so that
outputs one graph keeps there can feed the next. For a decoder LLM (client/residency.py) the KV cache is kept:
`generate` then moves token ids and logits per step, never the cache.

The model comes back as a shallow copy whose forward is the compiled one (parameters shared with the
original), because HF generate calls `self(...)`. Batch and sequence dimensions of the inputs are marked
dynamic before Dynamo sees them (dim 0 of every tensor, dim 1 of integer [batch, seq] tensors), so a new
batch size or prompt length does not recompile the graph; the program format has no symbolic sizes, so each
new shape still lowers a program of its own, counted in genie.client.report()["programs"].
"""

from __future__ import annotations

import copy
import functools
import uuid
from typing import Any

import torch

from genie.errors import InvalidRequest

from . import residency as policy
from .backend import genie_backend
from .session import Session


def remote(model: torch.nn.Module, session: Session | None = None, *, keep_kv: bool = True) -> torch.nn.Module:
    """torch.compile(model, backend="genie") bound to `session` (default: genie.connect's). Weights are sent
    once, on the first call of each graph; `keep_kv=False` ships a decoder's KV cache with every step (needed
    for beam search, which reorders the cache here). The model is not registered in genie's registry yet."""
    keep = policy.for_model(model) if keep_kv else None
    backend = functools.partial(genie_backend, session=session, residency=keep,
                                placement=f"remote-{uuid.uuid4().hex}")
    clone = copy.copy(model)
    clone.forward = _marking_dynamic(torch.compile(model.forward, backend=backend))
    if keep is not None:
        clone.generate = functools.partial(_generate, clone)
    return clone


def _marking_dynamic(compiled: Any) -> Any:
    @functools.wraps(compiled)
    def forward(*args: Any, **kwargs: Any) -> Any:
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor) and value.ndim:
                torch._dynamo.maybe_mark_dynamic(value, 0)
                if value.ndim == 2 and not value.dtype.is_floating_point:
                    torch._dynamo.maybe_mark_dynamic(value, 1)
        return compiled(*args, **kwargs)

    return forward


def _generate(clone: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    config = kwargs.get("generation_config") or getattr(clone, "generation_config", None)
    beams = kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1
    if beams > 1:
        raise InvalidRequest("genie.remote keeps this model's KV cache on the worker, and beam search reorders "
                             "the cache on the client: use genie.remote(model, keep_kv=False) for beam search")
    return type(clone).generate(clone, *args, **kwargs)
