"""The tokenizer's fast decode (straight through the Rust tokenizer) gives transformers' text exactly, and the
streamed pieces are the same whichever decode runs."""

from __future__ import annotations

import copy
import random

import pytest

from genie.serving.tokenizer import TextStream, Tokenizer

TEXT = ("Déjà vu: naïve café, 東京タワー 🎉🚀 and \"quotes\" <tags> \t tabs\n\nnew lines; 12345 ½ ∑ "
        "the quick brown fox jumps over the lazy dog. ") * 3


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir) -> Tokenizer:
    return Tokenizer(smollm2_dir)


def _wrapped(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer with the fast path off: every decode goes through transformers."""
    slow = copy.copy(tokenizer)
    slow._raw = None
    return slow


def test_the_fast_decode_is_taken_for_a_byte_level_bpe(tokenizer) -> None:
    assert tokenizer._raw is not None  # SmolLM2 cleans no spaces: the Rust decoder gives its text


def test_fast_decode_matches_transformers_on_every_window(tokenizer) -> None:
    ids = tokenizer.encode(TEXT)
    specials = sorted(tokenizer._tok.all_special_ids)
    rng = random.Random(0)
    windows = [ids[i:i + n] for i in range(0, len(ids) - 8) for n in (1, 2, 5, 8)]
    windows += [rng.sample(range(tokenizer.vocab_size), 6) + [rng.choice(specials)] for _ in range(200)]
    for window in windows:
        assert tokenizer.decode(window) == tokenizer._tok.decode(window, skip_special_tokens=True), window


def test_streamed_pieces_are_the_same_with_either_decode(tokenizer) -> None:
    ids = tokenizer.encode(TEXT)
    slow = _wrapped(tokenizer)
    for stop in ((), ("lazy dog",), ("🚀",)):
        fast_stream = TextStream(tokenizer, stop=stop, prompt_tail=ids[:4])
        slow_stream = TextStream(slow, stop=stop, prompt_tail=ids[:4])
        fast = [fast_stream.push(t) for t in ids[4:]] + [fast_stream.finish()]
        slow_pieces = [slow_stream.push(t) for t in ids[4:]] + [slow_stream.finish()]
        assert fast == slow_pieces
        assert "".join(fast) and fast_stream.stopped == bool(stop)


def test_a_tokenizer_that_cleans_spaces_keeps_the_transformers_decode(tokenizer) -> None:
    from genie.serving.tokenizer import _raw_decoder

    class Cleaning:
        _tokenizer = tokenizer._raw
        clean_up_tokenization_spaces = True

    assert _raw_decoder(Cleaning()) is None
    assert _raw_decoder(object()) is None
