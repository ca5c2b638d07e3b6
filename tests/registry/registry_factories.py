"""Tiny models defined in code, registered in tests as py:registry_factories:NAME."""

from __future__ import annotations

import torch
from torch import nn


class TinyVision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [batch, 3, H, W] -> logits [batch, 10]
        return self.head(torch.relu(self.conv(pixels)).mean(dim=(2, 3)))


class TinyRecsys(nn.Module):
    """Two embedding tables and an MLP; the output layer shares the item table (a tied tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.users = nn.Embedding(50, 16)
        self.items = nn.Embedding(40, 16)
        self.mlp = nn.Sequential(nn.Linear(32, 16), nn.ReLU())
        self.out = nn.Linear(16, 40, bias=False)
        self.out.weight = self.items.weight

    def forward(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        # ids: [batch] -> scores over items [batch, 40]
        return self.out(self.mlp(torch.cat([self.users(user_ids), self.items(item_ids)], dim=-1)))


def _seeded(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Same weights on every call, even from racing threads (the global RNG is shared between threads)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model


def tiny_vision():
    g = torch.Generator().manual_seed(0)
    return _seeded(TinyVision(), g), (torch.randn(1, 3, 16, 16, generator=g),)


def tiny_recsys():
    g = torch.Generator().manual_seed(0)
    return _seeded(TinyRecsys(), g), {"user_ids": torch.tensor([1, 2]), "item_ids": torch.tensor([3, 4])}


def not_a_model():
    return "a string"


def raises():
    raise RuntimeError("the factory's own bug")


def text_inputs():
    return TinyVision(), ("a picture of a cat",)
