"""Token embeddings -> one vector per input, computed as sentence_transformers.models.Pooling computes it.

Every function takes token embeddings [batch, seq, hidden] and an attention mask [batch, seq] (1 for a token,
0 for padding) and returns [batch, hidden] in float32, so a half-precision model still pools and normalises in
full precision and the sums over long inputs do not lose digits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from genie.workers.contract import POOLING_MODES

MAX_FILL = -1e9  # what sentence-transformers writes into padded positions before the max


def _expanded(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mask.unsqueeze(-1).expand(tokens.size()).to(tokens.dtype)  # [batch, seq, hidden]


def _masked_sum(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    expanded = _expanded(tokens, mask)
    return torch.sum(tokens * expanded, 1), torch.clamp(expanded.sum(1), min=1e-9)


def mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    summed, count = _masked_sum(tokens, mask)
    return summed / count


def mean_sqrt_len(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    summed, count = _masked_sum(tokens, mask)
    return summed / torch.sqrt(count)


def cls(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return tokens[:, 0]


def max_(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.max(tokens.masked_fill(_expanded(tokens, mask) == 0, MAX_FILL), 1)[0]


def lasttoken(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The last position whose mask is 1 (right padding; left padding gives the last position too); a row with no
    # token at all takes the last position, as sentence-transformers does.
    batch, seq, hidden = tokens.shape
    values, flipped = mask.flip(1).max(1)
    flipped = torch.where(values == 0, seq - 1, flipped)
    last = torch.clamp(seq - flipped - 1, min=0)
    index = last.view(batch, 1, 1).expand(batch, 1, hidden)
    return torch.gather(tokens * _expanded(tokens, mask), 1, index).squeeze(1)


POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean,
    "cls": cls,
    "max": max_,
    "mean_sqrt_len": mean_sqrt_len,
    "lasttoken": lasttoken,
}
assert tuple(POOLERS) == POOLING_MODES


def pool(mode: str, tokens: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """[batch, seq, hidden] tokens and [batch, seq] mask -> [batch, hidden] float32, L2-normalised if asked."""
    pooled = POOLERS[mode](tokens.float(), mask.to(tokens.device))
    return F.normalize(pooled, p=2, dim=1) if normalize else pooled
