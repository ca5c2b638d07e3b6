"""Prompt sets that exercise a prefix cache: one long system prompt shared by every request, and conversations
whose every turn resends the whole history so far.

The text is English-like sentences built from a seed (`english_text`): the same seed gives the same text,
different seeds give different text from the first word on. Its length is counted in words and full stops,
each of which is one token in the GPT-2, Llama and SmolLM2 BPE vocabularies, so N "tokens" of text are about
N tokens on those tokenizers (a test checks SmolLM2's within 5 %). The chat template adds its own few.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .prompts import WORDS, Prompt

OPENERS = ("The", "A", "Each", "Every", "This", "Our", "One", "That")
LINKS = ("of", "in", "for", "with", "on", "at", "from", "by", "about", "near", "after", "before", "under")
VERBS = ("is", "was", "has", "makes", "finds", "sees", "takes", "gives", "needs", "helps", "keeps", "shows",
         "brings", "leaves", "holds", "builds", "changes", "follows", "starts", "reaches", "meets", "moves")
DETS = ("the", "a", "every", "this", "that", "our", "their", "its")
ASKS = ("What does the text say about", "How does the text describe", "Why might the text mention",
        "Summarise what the text tells us about", "In one sentence, explain the link between")
MULTITURN_SYSTEM_LEN = 200  # tokens of each conversation's own system prompt
PREFIX_LEN = 1000  # tokens of the prefix dataset's shared system prompt
DEFAULT_TURNS = 4


def _sentence(rng: random.Random) -> list[str]:
    """One sentence as words, the last one ending in a full stop: 7 to 16 tokens with the stop."""
    words = [rng.choice(OPENERS), rng.choice(WORDS), rng.choice(VERBS), rng.choice(DETS), rng.choice(WORDS)]
    for _ in range(rng.randint(0, 2)):
        words += [rng.choice(LINKS), rng.choice(DETS), rng.choice(WORDS)]
    words[-1] += "."
    return words


def english_text(tokens: int, rng: random.Random) -> str:
    """About `tokens` tokens of varied English-like sentences (words plus one full stop each)."""
    words: list[str] = []
    count = 0
    while count < tokens:
        sentence = _sentence(rng)
        if count + len(sentence) + 1 > tokens and count:
            sentence = sentence[: max(1, tokens - count - 1)]  # trim the last sentence to land on the count
            sentence[-1] = sentence[-1].rstrip(".") + "."
        words += sentence
        count += len(sentence) + 1
    return " ".join(words)


def question(index: int, rng: random.Random) -> str:
    """A short user question (about 12 to 20 tokens), distinct for each `index`."""
    a, b = rng.sample(WORDS, 2)
    return f"Question {index + 1}: {rng.choice(ASKS)} the {a} and the {b}? Answer in a few words."


def _words(messages: Sequence[tuple[str, str]]) -> int:
    return sum(len(content.split()) for _, content in messages)


def prefix_prompts(count: int, prefix_len: int, seed: int) -> list[Prompt]:
    """`count` chats with one shared system prompt of about `prefix_len` tokens and a distinct question each."""
    rng = random.Random(seed)
    system = english_text(prefix_len, rng)
    prompts = []
    for index in range(count):
        messages = (("system", system), ("user", question(index, rng)))
        prompts.append(Prompt(f"prefix-{index}", messages, prefix_len + _words(messages[1:])))
    return prompts


def distinct_prompts(count: int, prefix_len: int, seed: int) -> list[Prompt]:
    """The prefix set's shape with nothing shared: each chat has its own system prompt of `prefix_len` tokens.

    A system message of its own also keeps templates such as SmolLM2's from inserting their default one,
    which every request would otherwise share."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        messages = (("system", english_text(prefix_len, rng)), ("user", question(index, rng)))
        prompts.append(Prompt(f"distinct-{index}", messages, prefix_len + _words(messages[1:])))
    return prompts


@dataclass(frozen=True, slots=True)
class Conversation:
    """A chat of several turns; turn k is sent with the replies the server gave to turns 0..k-1."""

    id: str
    system: str
    questions: tuple[str, ...]  # one user message per turn

    def prompt(self, replies: Sequence[str]) -> Prompt:
        """The request for turn `len(replies)`: system, every earlier question and its reply, the new question."""
        turn = len(replies)
        if turn >= len(self.questions):
            raise ValueError(f"{self.id} has {len(self.questions)} turns; turn {turn} does not exist")
        messages = [("system", self.system)]
        for asked, answered in zip(self.questions, replies):
            messages += [("user", asked), ("assistant", answered)]
        messages.append(("user", self.questions[turn]))
        return Prompt(f"{self.id}-turn{turn}", tuple(messages), _words(messages))


def conversations(count: int, turns: int, system_len: int, seed: int) -> list[Conversation]:
    """`count` conversations of `turns` questions, each with its own system prompt of about `system_len` tokens."""
    rng = random.Random(seed)
    made = []
    for index in range(count):
        system = english_text(system_len, rng)
        questions = tuple(question(turn, rng) for turn in range(turns))
        made.append(Conversation(f"conv-{index}", system, questions))
    return made


def request_count(items: Sequence[Prompt | Conversation]) -> int:
    """Requests a level sends: one per prompt, one per turn of each conversation."""
    return sum(len(item.questions) if isinstance(item, Conversation) else 1 for item in items)
