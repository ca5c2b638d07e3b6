"""Every refused step raises the right genie error with a clear message, changes nothing, and leaks nothing."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment

HIDDEN = 128  # gpt2_tiny_dir: n_embd


@pytest.fixture(scope="module")
def whole(gpt2_tiny_dir):
    # 8 blocks of 4 tokens: small enough to run out on purpose
    block = 4 * 2 * 4 * 4 * 32 * 4  # block_size * (k, v) * layers * heads * head_dim * fp32 bytes
    spec = FragmentSpec("whole", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=8 * block, block_size=4)
    return load_fragment(spec)


@pytest.fixture(scope="module")
def tail(gpt2_tiny_dir):
    return load_fragment(FragmentSpec("tail", str(gpt2_tiny_dir), layer_start=2, has_embedding=False, dtype="float32"))


@pytest.fixture(scope="module")
def head_less(gpt2_tiny_dir):
    return load_fragment(FragmentSpec("front", str(gpt2_tiny_dir), layer_end=2, has_head=False, dtype="float32"))


@pytest.fixture(autouse=True)
def clean(whole, tail, head_less):
    yield
    for frag in (whole, tail, head_less):
        frag.release([f"s{i}" for i in range(10)] + ["a", "b", "x"])
        assert frag.stats().kv_blocks_used == 0


def assert_still_works(frag) -> None:
    """A valid step runs after the failure, and releasing it frees every block."""
    before = frag.stats()
    [res] = frag.step([SeqStep("x", 0, [1, 2, 3], sample=True)])
    assert res.token_id is not None and frag.has_sequence("x")
    assert frag.release(["x"]) == 1
    assert frag.stats() == before


def sampled(**params) -> SeqStep:
    return SeqStep("s1", 0, [1], sample=True, sampling=SamplingParams(**params))


CASES = [
    ("unknown at position > 0", [SeqStep("s1", 5, [1])], NotFound, "unknown sequence 's1' on fragment 'whole'"),
    ("duplicate seq_id", [SeqStep("s1", 0, [1]), SeqStep("s1", 0, [2])], InvalidRequest, "appears twice"),
    ("token id too large", [SeqStep("s1", 0, [1, 1000])], InvalidRequest, "token id 1000 is outside the vocabulary"),
    ("negative token id", [SeqStep("s1", 0, [-1])], InvalidRequest, "token id -1 is outside"),
    ("empty chunk", [SeqStep("s1", 0, [])], InvalidRequest, "empty chunk"),
    ("hidden to embedding", [SeqStep("s1", 0, hidden=torch.zeros(1, HIDDEN))], InvalidRequest, "send token_ids"),
    ("too long", [SeqStep("s1", 0, [1] * 33)], InvalidRequest, "33 tokens exceed the context limit of 32"),
    ("negative temperature", [sampled(temperature=-1)], InvalidRequest, "temperature must be"),
    ("bad top_p", [sampled(top_p=0.0)], InvalidRequest, "top_p"),
    ("too many logprobs", [sampled(logprobs=999)], InvalidRequest, "logprobs must be between 0 and 20"),
    ("empty step", [], InvalidRequest, "at least one sequence"),
]


@pytest.mark.parametrize(("name", "steps", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_refused_step_raises_clear_error_and_changes_nothing(whole, name, steps, error, message):
    whole.step([SeqStep("s0", 0, [5, 6, 7])])  # a live sequence that must stay untouched
    before = whole.stats()
    with pytest.raises(error, match=message):
        whole.step(steps)
    assert whole.stats() == before and not whole.has_sequence("s1")
    assert_still_works(whole)
    [res] = whole.step([SeqStep("s0", 3, [8], sample=True)])  # s0 still holds exactly its 3 tokens
    assert res.token_id is not None


def test_position_mismatch_names_both_positions(whole):
    whole.step([SeqStep("a", 0, [1, 2, 3])])
    with pytest.raises(InvalidRequest, match="holds 3 tokens .* position 2; continue at 3"):
        whole.step([SeqStep("a", 2, [4])])
    with pytest.raises(InvalidRequest, match="holds 3 tokens"):
        whole.step([SeqStep("a", 0, [4])])  # restarting needs a release first
    whole.step([SeqStep("a", 3, [4])])


def test_one_bad_sequence_refuses_the_whole_batch(whole):
    whole.step([SeqStep("a", 0, [1, 2])])
    before = whole.stats()
    with pytest.raises(InvalidRequest, match="sequence 'b'"):
        whole.step([SeqStep("a", 2, [3]), SeqStep("s2", 0, [4, 5]), SeqStep("b", 0, [7, 5000])])
    assert whole.stats() == before and not whole.has_sequence("s2")
    whole.step([SeqStep("a", 2, [3])])  # 'a' did not advance in the refused step


def test_out_of_blocks_is_resource_exhausted_and_recoverable(whole):
    assert whole.info.num_kv_blocks == 8
    whole.step([SeqStep(f"s{i}", 0, [1] * 8) for i in range(3)])  # 2 blocks of 4 tokens each
    assert whole.stats().kv_blocks_free == 2
    with pytest.raises(ResourceExhausted, match="needs 4 more blocks of 4 tokens and 2 are free"):
        whole.step([SeqStep("s3", 0, [1] * 8), SeqStep("s4", 0, [1] * 5)])
    assert whole.stats().kv_blocks_free == 2
    assert whole.release(["s0", "s1", "s2", "nobody"]) == 3
    whole.step([SeqStep("s3", 0, [1] * 8), SeqStep("s4", 0, [1] * 5)])


def test_mid_model_fragment_wants_hidden_of_the_right_shape_and_dtype(tail):
    cases = [
        (SeqStep("s1", 0, [1, 2]), "send hidden states"),
        (SeqStep("s1", 0, hidden=torch.zeros(2, HIDDEN + 1)), rf"shape \[n, {HIDDEN}\], got \[2, {HIDDEN + 1}\]"),
        (SeqStep("s1", 0, hidden=torch.zeros(HIDDEN)), "shape"),
        (SeqStep("s1", 0, hidden=torch.zeros(2, HIDDEN, dtype=torch.int32)), "dtype int32 is not one of"),
        (SeqStep("s1", 0, hidden=torch.zeros(0, HIDDEN)), "empty chunk"),
    ]
    for step, message in cases:
        with pytest.raises(InvalidRequest, match=message):
            tail.step([step])
    for i, dtype in enumerate((torch.float32, torch.bfloat16, torch.float16)):
        [res] = tail.step([SeqStep(f"s{i}", 0, hidden=torch.randn(3, HIDDEN, dtype=dtype), sample=True)])
        assert res.token_id is not None and res.hidden is None


def test_sampling_needs_the_head(head_less):
    with pytest.raises(InvalidRequest, match="does not hold the head; sample on the last fragment"):
        head_less.step([SeqStep("s1", 0, [1, 2], sample=True)])
    [res] = head_less.step([SeqStep("s1", 0, [1, 2])])
    assert res.hidden.shape == (2, HIDDEN) and res.hidden.dtype == torch.float32 and res.token_id is None


def test_failure_inside_the_forward_rolls_back(whole, monkeypatch):
    whole.step([SeqStep("a", 0, [1, 2, 3, 4])])
    before = whole.stats()

    def boom(*args):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(whole.model, "forward", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        whole.step([SeqStep("a", 4, [5]), SeqStep("b", 0, [1] * 9)])
    assert whole.stats() == before and not whole.has_sequence("b")
    monkeypatch.undo()
    whole.step([SeqStep("a", 4, [5]), SeqStep("b", 0, [1] * 9)])


def test_release_ignores_unknown_ids_and_counts_real_ones(whole):
    whole.step([SeqStep("a", 0, [1]), SeqStep("b", 0, [2])])
    assert whole.release(["a", "a", "zzz"]) == 1
    assert not whole.has_sequence("a") and whole.has_sequence("b")
    assert whole.release(["b"]) == 1 and whole.release(["b"]) == 0
