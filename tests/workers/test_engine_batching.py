"""Batching must not change what a sequence generates: 16 prompts of different lengths, together vs alone."""

from __future__ import annotations

import pytest
import torch
from test_engine_support import first_divergence, generate, kernels, trace  # noqa: F401 (fixture)

from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment

BATCH = 16


def prompts(vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (2 + 5 * i,), generator=gen).tolist() for i in range(BATCH)]


def test_gpt2_batch_of_16_matches_each_alone_fp32(gpt2_tiny_dir, kernels):
    frag = load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32"), kernels=kernels)
    ps = prompts(1000, 0)
    together = generate(frag, ps, 48)
    assert together == [generate(frag, [p], 48)[0] for p in ps]


def test_mixed_prefill_and_decode_in_one_step_matches_separate_steps(gpt2_tiny_dir, kernels):
    """A step that prefills one sequence while others decode gives each what it gets on its own."""
    frag = load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32"), kernels=kernels)
    top = SamplingParams(logprobs=5)
    frag.step([SeqStep("a", 0, [1, 2, 3]), SeqStep("b", 0, list(range(10, 40)))])
    mixed = frag.step(
        [
            SeqStep("a", 3, [4], sample=True, sampling=top),
            SeqStep("c", 0, [7, 8, 9, 10, 11], sample=True, sampling=top),
            SeqStep("b", 30, [5], sample=True, sampling=top),
        ]
    )
    frag.release(["a", "b", "c"])
    frag.step([SeqStep("a", 0, [1, 2, 3])])
    [a] = frag.step([SeqStep("a", 3, [4], sample=True, sampling=top)])
    [c] = frag.step([SeqStep("c", 0, [7, 8, 9, 10, 11], sample=True, sampling=top)])
    frag.step([SeqStep("b", 0, list(range(10, 40)))])
    [b] = frag.step([SeqStep("b", 30, [5], sample=True, sampling=top)])
    for got, want in zip(mixed, (a, c, b)):
        assert got.token_id == want.token_id and [t for t, _ in got.top] == [t for t, _ in want.top]
        torch.testing.assert_close([v for _, v in got.top], [v for _, v in want.top], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def smol_prompts() -> list[list[int]]:
    return prompts(49152, 1)


@pytest.mark.slow
def test_smollm2_batch_of_16_matches_each_alone_fp32(smollm2_dir, smol_prompts):
    frag = load_fragment(FragmentSpec("s", str(smollm2_dir), dtype="float32", kv_cache_bytes=96 << 20))
    together = generate(frag, smol_prompts, 16)
    alone = [generate(frag, [p], 16)[0] for p in smol_prompts]
    for i, (a, b) in enumerate(zip(together, alone)):
        assert a == b, f"sequence {i} diverges at token {first_divergence(a, b)}"


@pytest.mark.slow
def test_smollm2_bf16_batching_only_flips_near_ties(smollm2_dir, smol_prompts):
    """In bf16 the matmul kernels round differently for 16 rows than for 1 (and batch 1 runs a different
    kernel altogether), so greedy paths may part. They may only part where the solo run itself was nearly
    undecided: the batched pick is in the solo run's top 5, within 0.5 nats of its top token. Top logits are
    20-30 here, where bf16 steps by 0.125, so 0.5 is four steps of the logits themselves."""
    frag = load_fragment(FragmentSpec("s", str(smollm2_dir), dtype="bfloat16", kv_cache_bytes=48 << 20))
    top = SamplingParams(logprobs=5)
    together = trace(frag, smol_prompts, 16, sampling=top)
    alone = [trace(frag, [p], 16, sampling=top)[0] for p in smol_prompts]
    parted = []
    for i, (a, b) in enumerate(zip(together, alone)):
        at = first_divergence([r.token_id for r in a], [r.token_id for r in b])
        if at is None:
            continue
        parted.append((i, at))
        solo = dict(b[at].top)
        assert a[at].token_id in solo, f"sequence {i}, token {at}: batched pick is not in the solo top-5"
        assert solo[b[at].token_id] - solo[a[at].token_id] < 0.5, f"sequence {i}, token {at}"
    print(f"bf16: {len(parted)} of {BATCH} sequences part from their solo run within 16 tokens: {parted}")
