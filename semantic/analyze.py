"""analyze(model, example_inputs) -> Profile."""

from __future__ import annotations

from typing import Any

from torch import nn

from genie.semantic.profile import Profile


def analyze(model: nn.Module, example_inputs: tuple | dict[str, Any], name: str | None = None) -> Profile:
    raise NotImplementedError("analyze is being built (issue 5)")
