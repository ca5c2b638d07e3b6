"""Right-pads a batch of token-id sequences into the arrays an encoder takes."""

from __future__ import annotations

import numpy as np


def padded_length(longest: int, multiple: int = 8, max_length: int | None = None) -> int:
    """`longest` rounded up to `multiple`, but never past `max_length`."""
    length = -(-longest // multiple) * multiple
    return length if max_length is None else min(length, max_length)


def pad_batch(
    seqs: list[list[int]], pad_id: int, multiple: int = 8, max_length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns int64 `input_ids` [N, L] right-padded with `pad_id` and int64 `attention_mask` [N, L] (1 = token).

    L is the longest sequence rounded up to `multiple` (capped at `max_length`); a sequence longer than
    `max_length` is a caller's bug (truncate or refuse it first) and raises ValueError.
    """
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    longest = max(len(s) for s in seqs)
    if max_length is not None and longest > max_length:
        index = next(i for i, s in enumerate(seqs) if len(s) == longest)
        raise ValueError(f"seqs[{index}] has {longest} tokens, more than max_length {max_length}; truncate it first")
    length = padded_length(longest, multiple, max_length)
    input_ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(seqs), length), dtype=np.int64)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask
