"""Logits processing in the batched sampler: logit_bias, min_tokens, repetition/frequency/presence penalties.

Hand-made logits check each formula; a tiny GPT-2 fragment checks that the counts come from the tokens the
sequence holds (so a re-prefill after preemption or migration rebuilds them), that a batch mixing penalised and
plain sequences leaves the plain ones exactly as alone, and that a head-only fragment takes the ids beside
the hidden states.
"""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment
from genie.workers.engine.logits_processors import process_logits
from genie.workers.engine.sampling import sample_rows

LOGITS = torch.tensor([3.0, 2.0, 1.0, -1.0, 0.5])


def processed(params: SamplingParams, history: list[int], position: int | None = None) -> list[float]:
    pos = len(history) if position is None else position
    return process_logits(LOGITS[None].clone(), [params], [pos], [history])[0].tolist()


def test_frequency_and_presence_count_output_tokens_only():
    # prompt [0, 0], output [1, 1, 3]: frequency counts 1 twice and 3 once; the prompt's 0 is not counted
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, prompt_len=2)
    assert processed(p, [0, 0, 1, 1, 3]) == pytest.approx([3.0, 2.0 - 1.0 - 0.25, 1.0, -1.0 - 0.5 - 0.25, 0.5])


def test_repetition_divides_positive_and_multiplies_negative_over_prompt_and_output():
    p = SamplingParams(repetition_penalty=2.0, prompt_len=1)
    assert processed(p, [0, 3]) == pytest.approx([1.5, 2.0, 1.0, -2.0, 0.5])


def test_a_penalty_near_zero_keeps_every_logit_finite_and_the_draw_works():
    # 5e-324 is 0 in float32: a positive logit divided by it would be inf (the fuzzer's case, a failed step)
    p = SamplingParams(repetition_penalty=5e-324, temperature=1.0, seed=1, prompt_len=1)
    out = processed(p, [0, 3])
    assert all(v == v and abs(v) < float("inf") for v in out) and out[0] == torch.finfo(torch.float32).max
    (drawn,) = sample_rows(LOGITS[None].clone(), [p], [2], torch.Generator(), histories=[[0, 3]])
    assert drawn.token_id == 0  # the penalised positive logit is now the largest by far


def test_logit_bias_adds_to_the_named_tokens():
    p = SamplingParams(logit_bias=((0, -100.0), (4, 10.0)))
    assert processed(p, []) == pytest.approx([-97.0, 2.0, 1.0, -1.0, 10.5])


def test_min_tokens_masks_stop_ids_until_enough_output():
    p = SamplingParams(min_tokens=2, stop_ids=(0,), prompt_len=3)
    assert processed(p, [], position=4)[0] == float("-inf")  # one output token so far
    assert processed(p, [], position=5)[0] == 3.0  # two: the stop token may come


def dense_reference(logits: torch.Tensor, p: SamplingParams, history: list[int]) -> torch.Tensor:
    """The formulas over the whole vocabulary, one row at a time."""
    vocab = logits.numel()
    counts = torch.bincount(torch.tensor(history[p.prompt_len :], dtype=torch.long), minlength=vocab).float()
    seen = torch.bincount(torch.tensor(history, dtype=torch.long), minlength=vocab) > 0
    rep = p.repetition_penalty
    out = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    return out - counts * p.frequency_penalty - (counts > 0).float() * p.presence_penalty


def test_the_gathered_penalties_equal_the_dense_formulas():
    gen = torch.Generator().manual_seed(3)
    vocab, rows = 40, 6
    logits = torch.randn(rows, vocab, generator=gen)
    params, histories = [], []
    for i in range(rows):
        length = [0, 1, 5, 17, 30, 30][i]  # an empty history, and rows of unequal lengths (padding)
        histories.append(torch.randint(0, 12, (length,), generator=gen).tolist())  # many repeats
        params.append(SamplingParams(frequency_penalty=0.3 * i, presence_penalty=0.5 - 0.2 * i,
                                     repetition_penalty=1.0 + 0.1 * i, prompt_len=min(i, length)))
    got = process_logits(logits.clone(), params, [len(h) for h in histories], histories)
    want = torch.stack([dense_reference(logits[i], params[i], histories[i]) for i in range(rows)])
    assert torch.allclose(got, want, atol=1e-6)


def test_rows_without_processing_are_untouched_and_greedy_follows_the_processed_row():
    logits = torch.stack([LOGITS, LOGITS, LOGITS])
    params = [SamplingParams(), SamplingParams(logit_bias=((0, -100.0),)), SamplingParams(logit_bias=((3, 100.0),))]
    drawn = sample_rows(logits, params, [1, 1, 1], torch.Generator(), histories=[[], [], []])
    assert [d.token_id for d in drawn] == [0, 1, 3]


def test_seeded_draws_with_penalties_repeat():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(temperature=1.0, seed=7, frequency_penalty=1.0, prompt_len=0)
    first = sample_rows(logits, [p, p], [3, 3], torch.Generator(), histories=[[1, 2, 3], [1, 2, 3]])
    again = sample_rows(logits, [p, p], [3, 3], torch.Generator(), histories=[[1, 2, 3], [1, 2, 3]])
    assert [d.token_id for d in first] == [d.token_id for d in again]


@pytest.fixture(scope="module")
def frag(gpt2_tiny_dir):
    return load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32"))


def decode(frag, seq_id: str, prompt: list[int], n: int, params: SamplingParams, others: int = 0) -> list[int]:
    """n greedy tokens of one sequence, next to `others` plain greedy sequences; releases them all."""
    extra = [(f"{seq_id}-o{i}", [7 + i] * (2 + i)) for i in range(others)]
    steps = [SeqStep(seq_id, 0, prompt, sample=True, sampling=params)]
    steps += [SeqStep(sid, 0, ids, sample=True) for sid, ids in extra]
    pos = [len(prompt)] + [len(ids) for _, ids in extra]
    last = [r.token_id for r in frag.step(steps)]
    out = [last[0]]
    for _ in range(n - 1):
        steps = [SeqStep(seq_id, pos[0], [last[0]], sample=True, sampling=params)]
        steps += [SeqStep(sid, p, [t], sample=True) for (sid, _), p, t in zip(extra, pos[1:], last[1:])]
        last = [r.token_id for r in frag.step(steps)]
        out.append(last[0])
        pos = [p + 1 for p in pos]
    frag.release([seq_id, *(sid for sid, _ in extra)])
    return out


PROMPT = [5, 6, 7, 8]


def test_penalties_change_greedy_output_and_counts_survive_a_re_prefill(frag):
    plain = decode(frag, "a", PROMPT, 40, SamplingParams())  # long enough for the plain text to repeat tokens
    assert len(set(plain)) < len(plain)
    p = SamplingParams(frequency_penalty=2.0, presence_penalty=2.0, prompt_len=len(PROMPT))
    penalised = decode(frag, "a", PROMPT, 40, p)
    assert penalised != plain
    assert len(set(penalised)) == len(penalised)  # a token once out is pushed far down: no repeats
    # preempted (or migrated) after 20 tokens: prompt + output prefilled again from 0 under a new id
    [res] = frag.step([SeqStep("moved", 0, PROMPT + penalised[:20], sample=True, sampling=p)])
    frag.release(["moved"])
    assert res.token_id == penalised[20]


def test_plain_sequences_in_a_penalised_batch_sample_as_alone(frag):
    alone = [decode(frag, f"x{i}", [7 + i] * (2 + i), 8, SamplingParams()) for i in range(3)]
    p = SamplingParams(repetition_penalty=1.8, logit_bias=((3, 5.0),), prompt_len=len(PROMPT))
    steps = [SeqStep("p", 0, PROMPT, sample=True, sampling=p)]
    steps += [SeqStep(f"p-o{i}", 0, [7 + i] * (2 + i), sample=True) for i in range(3)]
    first = [r.token_id for r in frag.step(steps)]
    frag.release(["p", "p-o0", "p-o1", "p-o2"])
    assert first[1:] == [a[0] for a in alone]
    assert decode(frag, "p", PROMPT, 8, p, others=3) != decode(frag, "p", PROMPT, 8, SamplingParams())


def test_min_tokens_holds_off_the_stop_token(frag):
    plain = decode(frag, "m", PROMPT, 6, SamplingParams())
    stop = plain[2]
    p = SamplingParams(min_tokens=6, stop_ids=(stop,), prompt_len=len(PROMPT))
    assert stop not in decode(frag, "m", PROMPT, 6, p)


def test_out_of_vocabulary_bias_is_refused_before_the_step(frag):
    p = SamplingParams(logit_bias=((10**6, 1.0),))
    with pytest.raises(InvalidRequest, match="logit_bias names token id 1000000"):
        frag.step([SeqStep("bad", 0, PROMPT, sample=True, sampling=p)])
    assert not frag.has_sequence("bad")


def test_a_head_only_fragment_counts_the_ids_sent_beside_the_hidden_states(gpt2_tiny_dir):
    first = load_fragment(FragmentSpec("f0", str(gpt2_tiny_dir), layer_end=1, has_head=False, dtype="float32"))
    head = load_fragment(FragmentSpec("f1", str(gpt2_tiny_dir), layer_start=1, has_embedding=False, dtype="float32"))
    whole = load_fragment(FragmentSpec("w", str(gpt2_tiny_dir), dtype="float32"))
    p = SamplingParams(frequency_penalty=2.0, presence_penalty=2.0, prompt_len=len(PROMPT))
    ids, pos, out = PROMPT, 0, []
    for _ in range(6):
        [h] = first.step([SeqStep("s", pos, ids)])
        [r] = head.step([SeqStep("s", pos, ids, hidden=h.hidden, sample=True, sampling=p)])
        pos, ids = pos + len(ids), [r.token_id]
        out.append(r.token_id)
    assert out == decode(whole, "s", PROMPT, 6, p)
    with pytest.raises(InvalidRequest, match="not token_ids"):  # without penalties the ids stay refused
        head.step([SeqStep("t", 0, PROMPT, hidden=h.hidden.repeat(4, 1), sample=True)])
