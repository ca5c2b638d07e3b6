"""The module behind demo_models.tiny_recommender: a DLRM-style click model small enough to build in a test.

Each categorical feature (a column of `sparse_ids`) looks up its own table; the dense features go through a
bottom MLP to the same width; the dot products of every pair of these vectors, with the dense vector, feed the
top MLP, which gives one logit per example. The output is a dict, so the served output is named `scores`.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyRecommender(nn.Module):
    TABLE_ROWS = (100, 50, 200, 30)  # rows of each feature's table: the ids a column may hold are 0 .. rows-1
    DENSE = 8  # dense features per example
    DIM = 16  # embedding width

    def __init__(self) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(rows, self.DIM) for rows in self.TABLE_ROWS)
        self.bottom = nn.Sequential(nn.Linear(self.DENSE, 32), nn.ReLU(), nn.Linear(32, self.DIM), nn.ReLU())
        vectors = len(self.TABLE_ROWS) + 1
        self.top = nn.Sequential(nn.Linear(self.DIM + vectors * vectors, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        # sparse_ids: [N, F] int64, dense: [N, DENSE] -> scores [N, 1]
        x = self.bottom(dense)  # [N, DIM]
        looked_up = [table(sparse_ids[:, i]) for i, table in enumerate(self.tables)]  # F x [N, DIM]
        vectors = torch.stack([x, *looked_up], dim=1)  # [N, F+1, DIM]
        dots = (vectors @ vectors.transpose(1, 2)).flatten(1)  # [N, (F+1)^2]
        return {"scores": self.top(torch.cat([x, dots], dim=1))}


class BigTableRecommender(TinyRecommender):
    """TinyRecommender with one large table (feature 2: 40 000 rows, 2.56 MB in float32), too big for a worker
    of a couple of MiB, so the planner shards it by rows (configs/recsys-sharded.yaml)."""

    TABLE_ROWS = (100, 50, 40_000, 30)
