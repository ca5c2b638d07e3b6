"""Prompts for `genie-bench serve`: the built-in chat set, a user's JSONL file, or synthetic prompts.

Synthetic prompts of `--input-len N` are N common English words chosen at random. The server's tokenizer is
unknown, so the length is approximate: each of these words is a single token (with its leading space) in the
BPE vocabularies of GPT-2, Llama, SmolLM2 and most of their descendants, so N words are about N tokens plus
the chat template. `usage.prompt_tokens`, when the server sends it, records the exact count.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ROLES = ("system", "user", "assistant")

# Frequent words that BPE tokenizers keep whole; varied so that no two prompts share a long prefix.
WORDS = tuple(
    """time year people way day man thing woman life child world school state family student group country
    problem hand part place case week company system program question work government number night point home
    water room mother area money story fact month lot right study book eye job word business issue side kind
    head house service friend father power hour game line end member law car city community name president
    team minute idea kid body information back parent face others level office door health person art war
    history party result change morning reason research girl guy moment air teacher force education foot boy
    age policy music market sense nation plan college interest death experience effect class control care
    field development role effort rate heart drug show leader light voice wife police mind price report
    decision son view relationship town road arm difference value building action model season society tax
    director position player record paper space ground form event official matter center couple site project
    activity star table need court oil situation cost industry figure street image phone data picture
    practice piece land product doctor wall patient worker news test movie north love support technology step
    baby computer type attention film tree source organization hair window evidence population garden
    river bird summer winter green blue red small large long short early late open simple clear strong""".split()
)


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    messages: tuple[tuple[str, str], ...]  # (role, content), the last one from the user
    approx_tokens: int  # rough prompt length (words); usage.prompt_tokens replaces it when the server sends it

    def chat_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def text(self) -> str:
        """The conversation as one plain-text prompt for the completions endpoint."""
        if len(self.messages) == 1:
            return self.messages[0][1]
        lines = [f"{role.capitalize()}: {content}" for role, content in self.messages]
        return "\n".join(lines) + "\nAssistant:"


def _word_count(messages: tuple[tuple[str, str], ...]) -> int:
    return sum(len(content.split()) for _, content in messages)


def _parse_record(record: object, where: str) -> Prompt:
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise ValueError(f"{where}: each line must be a JSON object with a non-empty 'messages' list")
    messages = []
    for message in record["messages"]:
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"{where}: each message needs 'role' (one of {', '.join(ROLES)}) and a string 'content'")
        messages.append((role, content))
    pairs = tuple(messages)
    return Prompt(str(record.get("id", where)), pairs, _word_count(pairs))


def _parse_lines(lines: list[str], source: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON: {err.msg}") from None
        prompts.append(_parse_record(record, where))
    if not prompts:
        raise ValueError(f"{source} holds no prompts")
    return prompts


def builtin_prompts() -> list[Prompt]:
    """The shipped set: about 300 chat prompts, from one-word greetings to two-passage comparisons."""
    text = resources.files("genie.benchmarks").joinpath("data/prompts.jsonl").read_text(encoding="utf-8")
    return _parse_lines(text.splitlines(), "built-in prompt set")


def file_prompts(path: Path) -> list[Prompt]:
    """Prompts from a JSONL file in the built-in set's format: {"messages": [{"role": ..., "content": ...}]}."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--prompts: cannot read {path}: {err.strerror}") from None
    return _parse_lines(text.splitlines(), str(path))


def synthetic_prompts(count: int, input_len: int, seed: int) -> list[Prompt]:
    """`count` prompts of `input_len` random common words each (about `input_len` tokens)."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(input_len))
        prompts.append(Prompt(f"synthetic-{index}", (("user", text),), input_len))
    return prompts


def sample(prompts: list[Prompt], count: int, seed: int) -> list[Prompt]:
    """`count` prompts in a seeded random order, cycling through the set when it is smaller than `count`."""
    rng = random.Random(seed)
    order: list[Prompt] = []
    while len(order) < count:
        batch = list(prompts)
        rng.shuffle(batch)
        order.extend(batch)
    return order[:count]
