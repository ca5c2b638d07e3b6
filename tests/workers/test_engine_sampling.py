"""Sampling: greedy, temperature, top-k, top-p, logprobs, and seeded draws that survive recompute and rebatching."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment
from genie.workers.engine.sampling import draw_seed, sample_rows


@pytest.fixture(scope="module")
def frag(gpt2_tiny_dir):
    return load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32"))


def run(frag, seq_id: str, prompt: list[int], n: int, params: SamplingParams, others: int = 0) -> list[int]:
    """n sampled tokens for one sequence, optionally decoded next to `others` unrelated sequences."""
    extra = [f"{seq_id}-other{i}" for i in range(others)]
    steps = [SeqStep(seq_id, 0, prompt, sample=True, sampling=params)]
    noise = SamplingParams(temperature=1.0)
    steps += [SeqStep(o, 0, [5 + i] * (3 + i), sample=True, sampling=noise) for i, o in enumerate(extra)]
    results = frag.step(steps)
    out, pos = [results[0].token_id], [len(prompt)] + [3 + i for i in range(others)]
    last = [r.token_id for r in results]
    for _ in range(n - 1):
        steps = [
            SeqStep(s, p, [t], sample=True, sampling=params if s == seq_id else noise)
            for s, p, t in zip([seq_id, *extra], pos, last)
        ]
        results = frag.step(steps)
        last = [r.token_id for r in results]
        out.append(last[0])
        pos = [p + 1 for p in pos]
    frag.release([seq_id, *extra])
    return out


def test_seeded_draws_repeat_after_recompute_and_in_other_batches(frag):
    params = SamplingParams(temperature=1.3, top_p=0.95, seed=1234)
    alone = run(frag, "a", [1, 2, 3, 4], 24, params)
    assert run(frag, "a", [1, 2, 3, 4], 24, params) == alone  # preempted and recomputed from scratch
    assert run(frag, "b", [1, 2, 3, 4], 24, params, others=5) == alone  # batched with other sequences
    assert run(frag, "a", [1, 2, 3, 4], 24, SamplingParams(temperature=1.3, top_p=0.95, seed=99)) != alone
    assert len(set(alone)) > 5  # random-init logits are flat: a real draw, not argmax


def test_draw_seed_depends_on_seed_and_position_only():
    assert draw_seed(7, 10) == draw_seed(7, 10)
    assert len({draw_seed(7, p) for p in range(100)} | {draw_seed(8, 10)}) == 101


def test_greedy_top_k_1_and_tiny_top_p_agree(frag):
    greedy = run(frag, "a", [9, 8, 7], 16, SamplingParams())
    assert run(frag, "a", [9, 8, 7], 16, SamplingParams(temperature=2.0, top_k=1, seed=3)) == greedy
    assert run(frag, "a", [9, 8, 7], 16, SamplingParams(temperature=2.0, top_p=1e-6, seed=3)) == greedy


def test_logprobs_are_log_softmax_of_scaled_logits(frag, gpt2_tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(gpt2_tiny_dir, dtype=torch.float32).eval()
    prompt = [11, 22, 33, 44, 55]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    for temperature in (0.0, 0.7):
        params = SamplingParams(temperature=temperature, logprobs=4, seed=5)
        [res] = frag.step([SeqStep("lp", 0, prompt, sample=True, sampling=params)])
        frag.release(["lp"])
        ref = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
        assert res.logprob == pytest.approx(ref[res.token_id].item(), abs=1e-4)
        values, ids = ref.topk(4)
        assert [t for t, _ in res.top] == ids.tolist()
        assert [v for _, v in res.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_temperature_draws_follow_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    probs = torch.softmax(logits[0] / 0.8, dim=-1)
    counts = torch.zeros(4)
    for seed in range(4000):
        [s] = sample_rows(logits, [SamplingParams(temperature=0.8, seed=seed)], [0], torch.Generator())
        counts[s.token_id] += 1
    torch.testing.assert_close(counts / 4000, probs, atol=0.025, rtol=0)


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 1e-30])
def test_a_temperature_near_zero_draws_the_argmax(temperature: float):
    logits = torch.tensor([[0.0, 9.0, 40.0, -30.0]])  # 40 / 1e-45 overflows float32
    params = SamplingParams(temperature=temperature, seed=3, top_k=2, top_p=0.9, logprobs=2)
    [s] = sample_rows(logits, [params], [0], torch.Generator())
    assert s.token_id == 2 and s.top[0][0] == 2 and math.isfinite(s.logprob)


def test_top_k_and_top_p_only_draw_inside_their_sets():
    logits = torch.tensor([[3.0, 2.5, 2.0, 0.0, -1.0]])
    probs = torch.softmax(logits[0], dim=-1)  # ~[0.48, 0.29, 0.18, 0.02, 0.01]
    nucleus = 2 if probs[:2].sum() >= 0.7 else 3
    for params, allowed in [
        (dict(top_k=2), {0, 1}),
        (dict(top_p=0.7), set(range(nucleus))),
        (dict(top_k=3, top_p=0.99), {0, 1, 2}),
    ]:
        drawn = {
            sample_rows(logits, [SamplingParams(temperature=1.0, seed=s, **params)], [0], torch.Generator())[0].token_id
            for s in range(300)
        }
        assert drawn == allowed, params


def test_unseeded_draws_vary(frag):
    params = SamplingParams(temperature=1.5)
    assert len({tuple(run(frag, "u", [4, 4, 4], 8, params)) for _ in range(4)}) > 1


def test_logprob_of_greedy_token_is_the_max():
    logits = torch.tensor([[0.5, 4.0, 1.0]])
    [s] = sample_rows(logits, [SamplingParams(logprobs=2)], [0], torch.Generator())
    assert s.token_id == 1 and s.logprob == pytest.approx(math.log(torch.softmax(logits[0], 0)[1].item()))
    assert [t for t, _ in s.top] == [1, 2]
