"""pad_batch: right padding, the mask, rounding to a multiple and the max_length cap."""

from __future__ import annotations

import numpy as np
import pytest

from genie.serving.stateless.padding import pad_batch, padded_length


def test_right_pads_to_the_longest_rounded_up_to_the_multiple() -> None:
    ids, mask = pad_batch([[5, 6, 7], [8], [1, 2, 3, 4, 5, 6, 7, 8, 9]], pad_id=0, multiple=8)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (3, 16)
    assert ids[0].tolist() == [5, 6, 7] + [0] * 13
    assert ids[1].tolist() == [8] + [0] * 15
    assert ids[2].tolist() == list(range(1, 10)) + [0] * 7
    assert mask.sum(axis=1).tolist() == [3, 1, 9]
    assert mask[0].tolist() == [1, 1, 1] + [0] * 13


def test_a_length_already_on_the_multiple_is_not_padded_further() -> None:
    ids, mask = pad_batch([[1] * 8, [2] * 3], pad_id=-1, multiple=8)
    assert ids.shape == (2, 8)
    assert ids[1].tolist() == [2, 2, 2, -1, -1, -1, -1, -1]
    assert mask[0].tolist() == [1] * 8


def test_the_pad_id_fills_the_padding_but_the_mask_marks_real_tokens_even_if_equal_to_it() -> None:
    ids, mask = pad_batch([[3, 3], [3]], pad_id=3, multiple=1)
    assert ids.tolist() == [[3, 3], [3, 3]]
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_multiple_one_pads_to_the_exact_longest() -> None:
    ids, _ = pad_batch([[1, 2, 3, 4, 5], [6]], pad_id=0, multiple=1)
    assert ids.shape == (2, 5)


def test_max_length_caps_the_rounding() -> None:
    ids, mask = pad_batch([[1] * 10], pad_id=0, multiple=8, max_length=12)
    assert ids.shape == (1, 12)
    assert mask[0].tolist() == [1] * 10 + [0, 0]
    ids, _ = pad_batch([[1] * 10], pad_id=0, multiple=8, max_length=64)
    assert ids.shape == (1, 16)


def test_a_sequence_longer_than_max_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match=r"seqs\[1\] has 13 tokens, more than max_length 12"):
        pad_batch([[1], [1] * 13], pad_id=0, max_length=12)


def test_empty_sequences_are_all_padding() -> None:
    ids, mask = pad_batch([[], [4, 5]], pad_id=9, multiple=4)
    assert ids.tolist() == [[9, 9, 9, 9], [4, 5, 9, 9]]
    assert mask.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]


def test_large_token_ids_keep_their_value() -> None:
    ids, _ = pad_batch([[2**31 - 1, 2**40]], pad_id=0, multiple=2)
    assert ids[0].tolist() == [2**31 - 1, 2**40]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_batch([], pad_id=0)
    with pytest.raises(ValueError, match="multiple"):
        pad_batch([[1]], pad_id=0, multiple=0)


@pytest.mark.parametrize(
    ("longest", "multiple", "cap", "expected"),
    [(0, 8, None, 0), (1, 8, None, 8), (8, 8, None, 8), (9, 8, None, 16), (9, 8, 10, 10), (7, 3, None, 9)],
)
def test_padded_length(longest: int, multiple: int, cap: int | None, expected: int) -> None:
    assert padded_length(longest, multiple, cap) == expected
