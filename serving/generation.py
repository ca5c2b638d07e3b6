"""Checks shared by every front door: turn a parsed request into a GenerationRequest for the router."""

from __future__ import annotations

import json
from dataclasses import dataclass

from genie.errors import InvalidRequest
from genie.workers.contract import SamplingParams

from .protocol import ChatMessage, GenerationParams
from .router import GenerationRequest
from .tokenizer import Tokenizer
from .tools import Message, ToolRequest

# Real text averages 3-5 characters a token; 16 leaves room for long runs of spaces or digits. A longer
# prompt cannot fit the context, so it is refused before the tokenizer spends seconds on it.
CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    max_context: int  # prompt + output tokens one request may use
    default_max_tokens: int
    created: int  # unix time the version was registered

    @property
    def max_prompt_chars(self) -> int:
        return self.max_context * CHARS_PER_TOKEN_BOUND


def check_prompt_chars(model: ServedModel, where: str, chars: int) -> None:
    if chars > model.max_prompt_chars:
        raise InvalidRequest(
            f"'{where}' has {chars} characters, more than this model's context of {model.max_context} tokens "
            f"can hold (at most {model.max_prompt_chars} characters are read); shorten the prompt"
        )


async def encode_prompt(tokenizer: Tokenizer, model: ServedModel, text: str) -> list[int]:
    """Tokenizes plain text off the event loop, after the character bound."""
    check_prompt_chars(model, "prompt", len(text))
    return await tokenizer.encode_async(text)


async def encode_messages(tokenizer: Tokenizer, model: ServedModel, messages: tuple[ChatMessage | Message, ...],
                          tools: ToolRequest | None = None) -> list[int]:
    """Renders the chat template (with the tools offered) and tokenizes off the event loop, after the character
    bound."""
    chars = sum(len(m.content or "") + sum(len(c.arguments) for c in getattr(m, "tool_calls", ())) for m in messages)
    if tools is not None:
        chars += sum(len(json.dumps(t.to_openai())) for t in tools.tools)
    check_prompt_chars(model, "messages", chars)
    return await tokenizer.encode_chat_async(messages, tools)


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
    if params.min_tokens > max_tokens:
        raise InvalidRequest(
            f"'min_tokens' ({params.min_tokens}) is more than max_tokens ({max_tokens}); ask for at most "
            f"{max_tokens}, or raise max_tokens"
        )
    return GenerationRequest(prompt_ids, max_tokens, sampling_of(params, n), params.stop, params.ignore_eos,
                             params.stop_token_ids, params.n)


def sampling_of(params: GenerationParams, prompt_len: int) -> SamplingParams:
    """The worker's sampling params; stop_ids (what min_tokens masks) are the router's to fill in, since only
    it knows the tokenizer's EOS ids (`Router.submit`)."""
    return SamplingParams(
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed,
        logprobs=params.logprobs,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        repetition_penalty=params.repetition_penalty,
        logit_bias=params.logit_bias,
        min_tokens=params.min_tokens,
        prompt_len=prompt_len,
        guide_kind=params.guide_kind,
        guide_spec=params.guide_spec,
    )


def check_token_ids(tokenizer: Tokenizer, ids: tuple[int, ...] | list[int]) -> list[int]:
    vocab = tokenizer.vocab_size
    if not ids or (min(ids) >= 0 and max(ids) < vocab):  # min/max first: a long valid list costs little
        return list(ids)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise InvalidRequest(f"the prompt has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    return list(ids)
