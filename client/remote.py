"""genie.remote(model): the module's forward runs on genie workers through the "genie" backend."""

from __future__ import annotations

import functools

import torch

from .backend import genie_backend
from .session import Session


def remote(model: torch.nn.Module, session: Session | None = None) -> torch.nn.Module:
    """torch.compile(model, backend="genie") bound to `session` (default: genie.connect's). Weights are sent
    once, on the first call of each graph; the model is not registered in genie's registry yet."""
    backend = functools.partial(genie_backend, session=session)
    return torch.compile(model, backend=backend)
