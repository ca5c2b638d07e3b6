"""Input modalities from structure: id inputs that are categorical rather than text, spectrograms fed to 2-D convs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from zoo_custom import SASRec

from genie.semantic import analyze


def _modalities(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, str]:
    return {i.name: i.modality for i in analyze(model, inputs).inputs}


class IdPlusTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ids = nn.Embedding(100, 8)
        self.tokens = nn.Embedding(100, 8)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.ids(a)[:, None, :] + self.tokens(b)  # a: [B]; b: [B, L]


class SelfSimilarity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(100, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.tokens(ids)  # [B, L, 8]
        return e @ e.transpose(1, 2)


class Conv2dOverMap(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if x.dim() == 4 else x.unsqueeze(1))


class Conv2dOverMel(Conv2dOverMap):
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return super().forward(mel)


def test_one_id_per_example_is_categorical_and_a_sequence_is_text():
    inputs = {"a": torch.zeros(2, dtype=torch.long), "b": torch.zeros(2, 6, dtype=torch.long)}
    mods = _modalities(IdPlusTokens(), inputs)
    assert mods == {"a": "sparse", "b": "text"}


def test_candidates_scored_against_the_history_are_categorical():
    inputs = {"seq": torch.zeros(2, 10, dtype=torch.long), "candidates": torch.zeros(2, 30, dtype=torch.long)}
    assert _modalities(SASRec(), inputs) == {"seq": "text", "candidates": "sparse"}
    assert analyze(SASRec(), inputs).workload_type == "recsys"


def test_ids_scored_only_against_themselves_stay_text():
    assert _modalities(SelfSimilarity(), {"ids": torch.zeros(2, 6, dtype=torch.long)}) == {"ids": "text"}


@pytest.mark.parametrize(("name", "shape", "want"), [
    ("x", (1, 100, 32), "audio"),  # [B, frames, bins]: no channel dim, not square
    ("x", (1, 28, 28), "image"),  # a square channel-less map: grayscale image
    ("mel", (1, 1, 64, 64), "audio"),  # one channel, named as audio
    ("x", (1, 1, 64, 64), "image"),
])
def test_maps_into_a_2d_conv(name, shape, want):
    model = Conv2dOverMel() if name == "mel" else Conv2dOverMap()
    assert _modalities(model, {name: torch.zeros(shape)}) == {name: want}
