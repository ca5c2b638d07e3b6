"""The built-in prompt set, user prompt files, and synthetic prompts of an approximate token length."""

from __future__ import annotations

import json

import pytest

from genie.benchmarks.prompts import builtin_prompts, file_prompts, sample, synthetic_prompts


def test_builtin_set_is_a_few_hundred_varied_prompts():
    prompts = builtin_prompts()
    assert 250 <= len(prompts) <= 500
    assert len({p.id for p in prompts}) == len(prompts)
    lengths = sorted(p.approx_tokens for p in prompts)
    assert lengths[0] < 5 and lengths[-1] > 400  # from "Hi!" to two-passage comparisons
    assert sum(length > 150 for length in lengths) >= 40
    assert any(len(p.messages) > 2 for p in prompts)  # multi-turn conversations
    assert any(p.messages[0][0] == "system" for p in prompts)
    assert all(p.messages[-1][0] == "user" for p in prompts)
    assert len({p.text() for p in prompts}) == len(prompts)


def test_completions_text_flattens_conversations():
    convo = next(p for p in builtin_prompts() if len(p.messages) > 2)
    text = convo.text()
    assert text.startswith("User: ") and text.endswith("\nAssistant:")


def test_sample_is_seeded_and_cycles_past_the_set_size():
    prompts = builtin_prompts()
    first, again = sample(prompts, 700, seed=3), sample(prompts, 700, seed=3)
    assert [p.id for p in first] == [p.id for p in again]
    assert [p.id for p in sample(prompts, 700, seed=4)] != [p.id for p in first]
    assert len(first) == 700 and len({p.id for p in first}) == len(prompts)


def test_file_prompts_reads_the_same_format(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hello there"}]}) + "\n\n")
    [prompt] = file_prompts(path)
    assert prompt.id == "a" and prompt.text() == "hello there" and prompt.approx_tokens == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "line 1 is not valid JSON"),
        ('{"messages": []}\n', "non-empty 'messages'"),
        ('{"messages": [{"role": "robot", "content": "x"}]}\n', "'role'"),
        ("\n", "holds no prompts"),
    ],
)
def test_file_prompts_rejects_bad_files_with_the_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        file_prompts(path)


def test_file_prompts_missing_file(tmp_path):
    with pytest.raises(ValueError, match="--prompts: cannot read"):
        file_prompts(tmp_path / "absent.jsonl")


def test_synthetic_prompts_are_about_input_len_tokens(smollm2_dir):
    """The approximation the README documents: one word, one token, checked on a real BPE tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = synthetic_prompts(5, 200, seed=1)
    assert len({p.text() for p in prompts}) == 5
    for p in prompts:
        n = len(tokenizer.encode(p.text(), add_special_tokens=False))
        assert 190 <= n <= 210, n
