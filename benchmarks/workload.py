"""The one workload every system in `genie-bench compare` runs: the same prompts, tokenized the same way.

genie-serve applies the model's chat template to each conversation; the in-process systems (HF generate, our
engine, the blind modes) get exactly those token ids, so every row does the same work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .prompts import Prompt

KV_BUDGET_SLACK = 1.25  # block rounding and the odd longer-than-estimated chat template
KV_BUDGET_FLOOR = 32 << 20


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: tuple[Prompt, ...]  # as sent over HTTP
    token_ids: tuple[tuple[int, ...], ...]  # the same prompts after the chat template, as the server sees them
    output_len: int
    ignore_eos: bool
    eos_ids: frozenset[int]

    def first(self, count: int) -> Workload:
        """The first `count` prompts: the small rows run a prefix of the big rows' prompts."""
        return Workload(self.prompts[:count], self.token_ids[:count], self.output_len, self.ignore_eos, self.eos_ids)

    def warmup(self) -> Workload:
        """One prompt, two tokens: run untimed before a system's rows, so one-time costs (kernel selection,
        first-touch memory, connection set-up) land in no row."""
        return Workload(self.prompts[:1], self.token_ids[:1], 2, True, self.eos_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)

    def finished(self, generated: list[int]) -> bool:
        if len(generated) >= self.output_len:
            return True
        return not self.ignore_eos and bool(generated) and generated[-1] in self.eos_ids


def tokenize(prompts: list[Prompt], model_dir: Path, output_len: int, ignore_eos: bool) -> Workload:
    from genie.serving.protocol import ChatMessage
    from genie.serving.tokenizer import Tokenizer

    tokenizer = Tokenizer(model_dir)
    ids = tuple(
        tuple(tokenizer.encode_chat(tuple(ChatMessage(role, content) for role, content in p.messages)))
        for p in prompts
    )
    return Workload(tuple(prompts), ids, output_len, ignore_eos, tokenizer.eos_token_ids)


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the roofline and the KV budget need from config.json."""

    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def read(cls, model_dir: Path) -> ModelShape:
        config = json.loads((model_dir / "config.json").read_text())
        hidden = config.get("hidden_size") or config["n_embd"]
        heads = config.get("num_attention_heads") or config["n_head"]
        return cls(
            layers=config.get("num_hidden_layers") or config["n_layer"],
            hidden=hidden,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        )

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * itemsize


def kv_budget_bytes(work: Workload, streams: int, shape: ModelShape, itemsize: int) -> int:
    """A KV cache that holds the `streams` longest requests at once, so no row waits for blocks."""
    lengths = sorted((len(ids) + work.output_len for ids in work.token_ids), reverse=True)[:streams]
    need = sum(lengths) * shape.kv_bytes_per_token(itemsize)
    return max(KV_BUDGET_FLOOR, int(need * KV_BUDGET_SLACK))
