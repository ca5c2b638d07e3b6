"""The prefix and multiturn prompt sets: deterministic, shared where they should be, distinct where not."""

from __future__ import annotations

import random

import pytest

from genie.benchmarks.datasets import (
    Conversation,
    conversations,
    distinct_prompts,
    english_text,
    prefix_prompts,
    request_count,
)


def test_english_text_is_seeded_and_varied():
    text = english_text(300, random.Random(1))
    assert text == english_text(300, random.Random(1))
    assert text != english_text(300, random.Random(2))
    words = text.split()
    assert len(set(words)) > 100  # not one word repeated
    assert text.count(".") > 15 and text.endswith(".")


def test_prefix_prompts_share_one_system_prompt_and_ask_distinct_questions():
    prompts = prefix_prompts(40, 500, seed=3)
    assert [p.messages for p in prompts] == [p.messages for p in prefix_prompts(40, 500, seed=3)]
    assert [p.messages for p in prompts] != [p.messages for p in prefix_prompts(40, 500, seed=4)]
    assert len({p.id for p in prompts}) == 40
    assert all([role for role, _ in p.messages] == ["system", "user"] for p in prompts)
    assert len({p.messages[0][1] for p in prompts}) == 1
    assert len({p.messages[1][1] for p in prompts}) == 40
    assert all(8 <= len(p.messages[1][1].split()) <= 25 for p in prompts)


def test_distinct_prompts_have_the_same_shape_and_share_nothing():
    prompts = distinct_prompts(10, 200, seed=0)
    systems = [p.messages[0][1] for p in prompts]
    assert len(set(systems)) == 10
    assert len({" ".join(s.split()[:3]) for s in systems}) > 5  # different from the first words on
    assert all(abs(len(s.split()) + s.count(".") - 200) <= 1 for s in systems)


def test_lengths_are_about_right_on_smollm2s_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    for n, seed in ((200, 0), (1000, 1)):
        assert abs(count(english_text(n, random.Random(seed))) - n) <= 0.05 * n
    for prompt in prefix_prompts(20, 100, seed=5):
        assert 10 <= count(prompt.messages[1][1]) <= 30


def test_conversation_turns_carry_the_replies_so_far():
    convo = Conversation("c", "be brief", ("first?", "second?", "third?"))
    assert convo.prompt([]).messages == (("system", "be brief"), ("user", "first?"))
    turn2 = convo.prompt(["one", "two"])
    assert turn2.id == "c-turn2"
    assert turn2.messages == (("system", "be brief"), ("user", "first?"), ("assistant", "one"),
                              ("user", "second?"), ("assistant", "two"), ("user", "third?"))
    with pytest.raises(ValueError, match="has 3 turns"):
        convo.prompt(["a", "b", "c"])


def test_conversations_are_seeded_each_with_its_own_system_prompt():
    made = conversations(6, 3, 120, seed=2)
    assert made == conversations(6, 3, 120, seed=2)
    assert len({c.system for c in made}) == 6
    assert all(len(c.questions) == 3 and len(set(c.questions)) == 3 for c in made)
    assert request_count(made) == 18
    assert request_count([*prefix_prompts(4, 50, 0), *made[:1]]) == 7
