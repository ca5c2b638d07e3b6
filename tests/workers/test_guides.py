"""The worker's guide state (guides.py) without a model: masks, their rebuild from the output ids, and the
sampler's handling of guided rows beside free ones."""

from __future__ import annotations

import json

import pytest
import torch

from genie.errors import InvalidRequest
from genie.workers.engine import SamplingParams, SeqStep
from genie.workers.engine.guides import GuideCompiler, Guides, apply_masks
from genie.workers.guide_specs import choice_regex, parse_grammar
from genie.workers.engine.sampling import sample_rows

VOCAB = 49152
SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}},
                     "required": ["a", "b"]})


@pytest.fixture(scope="module")
def compiler(smollm2_dir):
    return GuideCompiler(str(smollm2_dir), VOCAB)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


def guided(prompt_len: int, kind: str = "json_schema", spec: str = SCHEMA) -> SamplingParams:
    return SamplingParams(prompt_len=prompt_len, guide_kind=kind, guide_spec=spec)


def allowed(mask: torch.Tensor) -> set[int]:
    bits = (mask[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return set(torch.nonzero(bits.reshape(-1)).flatten().tolist())


def walk(guides: Guides, seq_id: str, prompt: list[int], output: list[int], p: SamplingParams) -> list[set[int]]:
    """The allowed set before each output token, stepping prompt then one output token at a time."""
    guides.record([SeqStep(seq_id, 0, prompt, sample=True, sampling=p)])
    sets = [allowed(guides.masks([seq_id], [p])[0])]
    for i, token in enumerate(output):
        guides.record([SeqStep(seq_id, len(prompt) + i, [token], sample=True, sampling=p)])
        sets.append(allowed(guides.masks([seq_id], [p])[0]))
    return sets


def test_json_schema_mask_allows_the_object_and_ends_with_eos(compiler, tokenizer):
    guides = Guides(compiler)
    text = '{"a": 12, "b": "y"}'
    output = tokenizer.encode(text)
    sets = walk(guides, "s", [1, 2, 3], output, guided(3))
    assert all(token in sets[i] for i, token in enumerate(output))  # each token of a valid answer is allowed
    assert tokenizer.encode("hello")[0] not in sets[0]
    assert sets[-1] == set(compiler.stop_ids)  # the object is complete: only EOS


def test_the_mask_after_a_re_prefill_or_a_retry_equals_the_uninterrupted_one(compiler, tokenizer):
    output = tokenizer.encode('{"a": 7, "b": "x"}')
    prompt = [5, 6, 7, 8]
    straight = walk(Guides(compiler), "s", prompt, output, guided(4))
    for cut in (0, 3, len(output) - 1):
        guides = Guides(compiler)
        walk(guides, "s", prompt, output[:cut], guided(4))
        guides.record([SeqStep("s", 0, prompt + output[:cut], sample=True, sampling=guided(4))])  # preempted
        assert allowed(guides.masks(["s"], [guided(4)])[0]) == straight[cut]
        guides.record([SeqStep("s", 2, prompt[2:] + output[:cut], sample=True, sampling=guided(4))])  # chunked
        assert allowed(guides.masks(["s"], [guided(4)])[0]) == straight[cut]
    guides = Guides(compiler)
    walk(guides, "s", prompt, output[:5], guided(4))
    wrong = tokenizer.encode("{")[0]
    guides.record([SeqStep("s", 9, [wrong], sample=True, sampling=guided(4))])  # a step that failed ...
    guides.masks(["s"], [guided(4)])
    guides.record([SeqStep("s", 8, [output[4]], sample=True, sampling=guided(4))])  # ... and its retry
    assert allowed(guides.masks(["s"], [guided(4)])[0]) == straight[5]
    guides.forget(["s"])
    assert "s" not in guides


def test_a_choice_guide_allows_only_the_choices(compiler, tokenizer):
    guides = Guides(compiler)
    spec = json.dumps(["yes", "no"])
    first = walk(guides, "c", [1], [], guided(1, "choice", spec))[0]
    assert tokenizer.encode("yes")[0] in first and tokenizer.encode("no")[0] in first
    assert tokenizer.encode("maybe")[0] not in first


def test_bad_guides_are_refused_with_a_message():
    for kind, spec in (("json_schema", "{bad"), ("regex", "a(b"), ("grammar", "root ::= foo"),
                       ("choice", "[]"), ("json_schema", '{"properties": 3}')):
        with pytest.raises(ValueError) as err:
            parse_grammar(kind, spec)
        assert ".cc:" not in str(err.value)
    assert choice_regex(["a.b", "c|d"]) == r"(a\.b|c\|d)"


def test_the_worker_refuses_a_guide_that_does_not_compile(compiler):
    with pytest.raises(InvalidRequest, match="does not compile"):
        Guides(compiler).record([SeqStep("s", 0, [1], sample=True, sampling=guided(1, "regex", "a(b"))])


def test_apply_masks_sets_the_rest_to_minus_inf():
    rows = torch.randn(2, 70)
    masks = [torch.zeros(3, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)]
    masks[0][0] = 1 << 5
    masks[1][1] = -(2**31)  # bit 31 of word 1: token 63
    out = apply_masks(rows.clone(), masks)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [5]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [63]


def test_free_rows_are_bit_identical_beside_guided_rows_and_greedy_takes_the_masked_argmax():
    torch.manual_seed(0)
    logits = torch.randn(4, 64).to(torch.bfloat16)
    free = [SamplingParams(), SamplingParams(temperature=0.9, seed=3, logprobs=2), SamplingParams(top_k=5,
            temperature=1.1, seed=4)]
    alone = sample_rows(logits[:3], free, [10, 11, 12], torch.Generator())
    mask = torch.zeros(2, dtype=torch.int32)
    mask[1] = 1 << 7  # token 39 only
    params = [free[0], guided(3, "regex", "a"), free[1], free[2]]
    rows = logits[[0, 3, 1, 2]]
    mixed = sample_rows(rows, params, [10, 13, 11, 12], torch.Generator(), guide_masks={1: mask})
    assert [mixed[0], mixed[2], mixed[3]] == alone
    assert mixed[1].token_id == 39


def test_a_guide_that_allows_only_masked_tokens_still_decides():
    rows = torch.full((1, 40), float("-inf"))
    rows[0, 1] = 0.5
    mask = torch.zeros(2, dtype=torch.int32)
    mask[0] = 1 << 3  # only token 3, whose logit min_tokens set to -inf
    out = apply_masks(rows, [mask])
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [3]
