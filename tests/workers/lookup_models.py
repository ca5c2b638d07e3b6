"""`py:` factories for test_stateless_lookups: an eleven-argument forward and a model that computes its ids."""

from __future__ import annotations

import torch
from torch import nn

WIDE = 11  # more positional inputs than one digit names: "10" sorts before "2"


class ManyArgs(nn.Module):
    """Eleven positional inputs, input i of shape [batch, i + 1]; the output weighs each by its position."""

    def forward(self, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10) -> torch.Tensor:
        inputs = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)
        return torch.stack([(i + 1) * t.sum(-1) for i, t in enumerate(inputs)], dim=-1)  # [batch, WIDE]


class ShiftedIds(nn.Module):
    """Looks up ids + 1, so the ids the table sees are computed, not a view of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids + 1).sum(-1)  # ids: [batch, 1] -> [batch, 1]


def many_args():
    return ManyArgs(), tuple(torch.randn(1, i + 1) for i in range(WIDE))


def shifted_ids():
    torch.manual_seed(2)
    return ShiftedIds(), {"ids": torch.zeros(1, 1, dtype=torch.int64)}
