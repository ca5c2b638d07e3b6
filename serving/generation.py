"""Checks shared by every front door: turn a parsed request into a GenerationRequest for the router."""

from __future__ import annotations

from dataclasses import dataclass

from genie.errors import InvalidRequest
from genie.workers.engine.types import SamplingParams

from .protocol import GenerationParams
from .router import GenerationRequest
from .tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    max_context: int  # prompt + output tokens one request may use
    default_max_tokens: int
    created: int  # unix time the version was registered


def build_generation(model: ServedModel, prompt_ids: list[int], params: GenerationParams) -> GenerationRequest:
    """Validates the prompt length and max_tokens against the context; fills in the default max_tokens."""
    ctx = model.max_context
    n = len(prompt_ids)
    if n == 0:
        raise InvalidRequest("the prompt is empty; give at least one token")
    if n >= ctx:
        raise InvalidRequest(
            f"the prompt has {n} tokens but the model's context is {ctx} tokens, leaving no room for output; "
            "shorten the prompt"
        )
    if params.max_tokens is not None and n + params.max_tokens > ctx:
        raise InvalidRequest(
            f"max_tokens ({params.max_tokens}) plus the prompt ({n} tokens) exceeds the model's context of "
            f"{ctx} tokens; ask for at most {ctx - n} tokens"
        )
    max_tokens = params.max_tokens or min(model.default_max_tokens, ctx - n)
    sampling = SamplingParams(
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        logprobs=params.logprobs,
    )
    return GenerationRequest(prompt_ids, max_tokens, sampling, params.stop, params.ignore_eos)


def check_token_ids(tokenizer: Tokenizer, ids: tuple[int, ...] | list[int]) -> list[int]:
    vocab = tokenizer.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(f"the prompt has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    return list(ids)
