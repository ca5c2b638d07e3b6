"""Graph capture without weights: torch.export on meta tensors, with a dispatch-mode fallback."""

from __future__ import annotations

from typing import Any

import networkx as nx
from torch import nn

Graph = nx.DiGraph


def capture(model: nn.Module, example_inputs: tuple | dict[str, Any]) -> Graph:
    raise NotImplementedError("capture is being built (issue 5)")
