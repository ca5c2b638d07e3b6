"""`py:` factory models for the stateless-engine tests; the worker imports this module by name (PYTHONPATH)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """[batch, 3, 16, 16] images -> ([batch, 10] logits, [batch, 8, 4, 4] features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool(torch.relu(self.norm(self.conv(images))))
        return self.head(features.flatten(1)), features


class Scorer(nn.Module):
    """A recommender-style model with two named inputs: item ids [batch, 5] and dense features [batch, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.EmbeddingBag(50, 6)
        self.dense = nn.Linear(4, 6)

    def forward(self, item_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return (self.items(item_ids) * self.dense(dense)).sum(-1)


def small_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial running stats, so a missed buffer load would show
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 1.5)
    return model.eval(), (torch.randn(2, 3, 16, 16),)


def scorer() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    return Scorer().eval(), {"item_ids": torch.randint(0, 50, (2, 5)), "dense": torch.randn(2, 4)}
