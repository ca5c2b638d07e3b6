"""Zoo models of our own beyond transformers: recommenders (two-tower, SASRec- and BERT4Rec-style sequential,
wide & deep), a CNN over log-mel spectrograms, and a model whose forward has data-dependent shapes, which
torch.export refuses."""

from __future__ import annotations

import torch
from torch import nn


class TwoTower(nn.Module):
    """Retrieval two-tower: user id + user categorical features and item id + item category, each through its
    own tables and MLP tower, scored by a dot product. user_id, item_id, item_cat: [B] int64; user_feats: [B, 4]."""

    def __init__(self, users: int = 1000, items: int = 2000, cats: int = 50, dim: int = 32) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.user_feat = nn.Embedding(cats, dim)
        self.item = nn.Embedding(items, dim)
        self.item_cat = nn.Embedding(cats, dim)
        self.user_tower = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.item_tower = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, user_id: torch.Tensor, user_feats: torch.Tensor, item_id: torch.Tensor,
                item_cat: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.user(user_id), self.user_feat(user_feats).mean(dim=1)], dim=-1)  # [B, 2*dim]
        v = torch.cat([self.item(item_id), self.item_cat(item_cat)], dim=-1)  # [B, 2*dim]
        return (self.user_tower(u) * self.item_tower(v)).sum(dim=-1)  # [B]


class SASRec(nn.Module):
    """SASRec-style sequential recommender: item-id + position embeddings, causal transformer blocks over the
    history, the last state scored against candidate items from the same item table.
    seq: [B, L] int64 item ids; candidates: [B, C] int64."""

    def __init__(self, items: int = 5000, dim: int = 32, max_len: int = 50, layers: int = 2) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim)
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, seq: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        h = self.items(seq) + self.positions(pos)  # [B, L, dim]
        mask = torch.triu(torch.full((length, length), float("-inf"), device=seq.device), diagonal=1)
        h = self.norm(self.blocks(h, mask=mask, is_causal=True))
        last = h[:, -1:, :]  # [B, 1, dim]
        return (last @ self.items(candidates).transpose(1, 2)).squeeze(1)  # [B, C]


class Bert4Rec(nn.Module):
    """BERT4Rec-style: bidirectional blocks over the item history, every position scored against the whole item
    table (tied output), as a masked LM scores tokens. item_seq: [B, L] int64 item ids."""

    def __init__(self, items: int = 3000, dim: int = 32, max_len: int = 50) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim)
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(block, 2, enable_nested_tensor=False)

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(item_seq.shape[1], device=item_seq.device)
        h = self.items(item_seq) + self.positions(pos)  # [B, L, dim]
        return self.blocks(h) @ self.items.weight.t()  # [B, L, items]


class WideDeep(nn.Module):
    """Wide & deep: a linear model over crossed sparse ids (EmbeddingBag with dim 1) plus a deep MLP over pooled
    embeddings and dense features. sparse: [B, fields, bag] int64; dense: [B, 8] float."""

    def __init__(self, fields: int = 6, rows: int = 500, dim: int = 16) -> None:
        super().__init__()
        self.wide = nn.ModuleList(nn.EmbeddingBag(rows, 1, mode="sum") for _ in range(fields))
        self.deep_tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="mean") for _ in range(fields))
        self.deep = nn.Sequential(nn.Linear(fields * dim + 8, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        wide = sum(t(sparse[:, i]) for i, t in enumerate(self.wide))  # [B, 1]
        deep = torch.cat([t(sparse[:, i]) for i, t in enumerate(self.deep_tables)] + [dense], dim=1)
        return torch.sigmoid(wide + self.deep(deep))


class AudioCNN(nn.Module):
    """PANNs-style audio tagger: 2-D convs over a one-channel log-mel spectrogram, pooled over frequency then
    time. mel: [B, 1, 64 mel bins, 200 frames] float."""

    def __init__(self, classes: int = 50) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.convs(mel).mean(dim=2)  # [B, 32, frames / 4]
        return torch.sigmoid(self.head(h.amax(dim=-1)))


class MaskedPooling(nn.Module):
    """A CNN that keeps only the feature positions above a threshold (boolean-mask indexing, torch.nonzero):
    the output shape depends on the values, so torch.export refuses it and capture must fall back.
    image: [B, 3, 32, 32] float."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2))
        self.head = nn.Linear(32, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.features(image).flatten(2).transpose(1, 2)  # [B, HW, 32]
        keep = f.norm(dim=-1) > 1.0  # [B, HW] bool
        picked = f[keep]  # [N, 32], N known only from the data
        count = torch.nonzero(keep).shape[0]
        return self.head(picked.sum(dim=0, keepdim=True) / max(count, 1))
