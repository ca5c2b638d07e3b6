"""Constrained decoding in the engine on SmolLM2: guided sequences follow their guide through the batched
step, beside free ones that decode as alone, and survive a re-prefill (preemption, migration)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from genie.errors import InvalidRequest
from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "size": {"enum": ["small", "large"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "size", "tags"],
}
EOS = 2

pytestmark = pytest.mark.slow  # loads SmolLM2 and decodes about 200 tokens


@pytest.fixture(scope="module")
def frag(smollm2_dir):
    return load_fragment(FragmentSpec("s", str(smollm2_dir), dtype="float32"))


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(str(smollm2_dir))


def prompt_of(tok, text: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


def decode(frag, seqs: dict[str, tuple[list[int], SamplingParams]], n: int) -> dict[str, list[int]]:
    """Up to n tokens of each sequence, all in one batch each step; a sequence stops after EOS."""
    out: dict[str, list[int]] = {s: [] for s in seqs}
    steps = [SeqStep(s, 0, ids, sample=True, sampling=p) for s, (ids, p) in seqs.items()]
    for _ in range(n):
        if not steps:
            break
        results = frag.step(steps)
        nxt = []
        for step, r in zip(steps, results):
            out[step.seq_id].append(r.token_id)
            if r.token_id != EOS:
                nxt.append(SeqStep(step.seq_id, step.position + step.num_tokens, [r.token_id], sample=True,
                                   sampling=step.sampling))
        steps = nxt
    frag.release(list(seqs))
    return out


def text_of(tok, ids: list[int]) -> str:
    return tok.decode([t for t in ids if t != EOS])


def test_json_schema_output_parses_and_free_neighbours_decode_as_alone(frag, tok):
    jsonschema = pytest.importorskip("jsonschema")
    free_prompt = prompt_of(tok, "Name three colours.")
    alone = decode(frag, {"f": (free_prompt, SamplingParams())}, 12)["f"]
    guided_prompt = prompt_of(tok, "Describe a cat as JSON.")
    p = SamplingParams(prompt_len=len(guided_prompt), guide_kind="json_schema", guide_spec=json.dumps(SCHEMA))
    both = decode(frag, {"g": (guided_prompt, p), "f": (free_prompt, SamplingParams())}, 80)
    assert both["f"][:12] == alone
    assert both["g"][-1] == EOS  # the guide completed and ended the sequence
    jsonschema.validate(json.loads(text_of(tok, both["g"])), SCHEMA)


def test_a_guided_sequence_prefilled_again_continues_as_before(frag, tok):
    prompt = prompt_of(tok, "Give me a JSON object.")
    p = SamplingParams(prompt_len=len(prompt), guide_kind="json", guide_spec="")
    straight = decode(frag, {"j": (prompt, p)}, 30)["j"]
    cut = 10
    resumed = decode(frag, {"moved": (prompt + straight[:cut], p)}, 30 - cut)["moved"]
    assert resumed == straight[cut:]


def test_choice_and_regex_guides(frag, tok):
    prompt = prompt_of(tok, "Is the sky blue? Answer yes or no.")
    choice = SamplingParams(temperature=0.8, seed=1, prompt_len=len(prompt), guide_kind="choice",
                            guide_spec=json.dumps(["absolutely", "never"]))
    regex = SamplingParams(prompt_len=len(prompt), guide_kind="regex", guide_spec=r"[0-9]{3}-[a-z]{2}")
    out = decode(frag, {"c": (prompt, choice), "r": (prompt, regex)}, 20)
    assert text_of(tok, out["c"]) in ("absolutely", "never")
    import re

    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", text_of(tok, out["r"]))


def test_a_bad_guide_is_refused_and_the_fragment_carries_on(frag, tok):
    bad = SamplingParams(prompt_len=3, guide_kind="grammar", guide_spec="root ::= missing")
    with pytest.raises(InvalidRequest, match="does not compile"):
        frag.step([SeqStep("bad", 0, [1, 2, 3], sample=True, sampling=bad)])
    assert not frag.has_sequence("bad")
    with pytest.raises(InvalidRequest, match="guide_kind"):
        frag.step([SeqStep("bad", 0, [1, 2, 3], sample=True, sampling=SamplingParams(guide_kind="yaml"))])
    assert decode(frag, {"ok": ([1, 2, 3], SamplingParams())}, 2)["ok"]


def test_a_head_only_fragment_follows_the_guide_from_the_ids_beside_the_hidden_states(smollm2_dir, frag, tok):
    first = load_fragment(FragmentSpec("f0", str(smollm2_dir), layer_end=15, has_head=False, dtype="float32"))
    head = load_fragment(FragmentSpec("f1", str(smollm2_dir), layer_start=15, has_embedding=False,
                                      dtype="float32"))
    prompt = prompt_of(tok, "Is water wet? Answer yes or no.")
    p = SamplingParams(prompt_len=len(prompt), guide_kind="choice", guide_spec=json.dumps(["maybe so", "nope"]))
    [h] = first.step([SeqStep("s", 0, prompt)])
    with pytest.raises(InvalidRequest, match="needs its token_ids"):
        head.step([SeqStep("s", 0, hidden=h.hidden, sample=True, sampling=p)])
    ids, pos, out = prompt, 0, []
    while not out or out[-1] != EOS:
        [h] = first.step([SeqStep("s", pos, ids)]) if pos else [h]
        [r] = head.step([SeqStep("s", pos, ids, hidden=h.hidden, sample=True, sampling=p)])
        pos, ids = pos + len(ids), [r.token_id]
        out.append(r.token_id)
    assert out == decode(frag, {"w": (prompt, p)}, 10)["w"]
    assert text_of(tok, out) in ("maybe so", "nope")
