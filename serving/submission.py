"""What passes between a front door and the router: a request to generate, its handle, and its deltas."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from genie.errors import GenieError, InvalidRequest
from genie.workers.contract import SamplingParams, SeqResult

from .tokenizer import TextStream, Tokenizer


@dataclass(slots=True)
class Delta:
    """What a client receives after a step: new text, the ids behind it, and the end when it comes."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SeqResult] = field(default_factory=list)  # per token, when asked for
    finish_reason: str | None = None  # set on the last delta of its choice
    failure: GenieError | None = None  # why it ended early, with its type (and so its HTTP/gRPC status)
    index: int = 0  # the choice it belongs to (OpenAI's choices[i].index), 0 unless n > 1

    @property
    def error(self) -> str | None:
        return None if self.failure is None else str(self.failure)


@dataclass(slots=True)
class Submission:
    """A front door's handle on one request."""

    request_id: str
    prompt_tokens: int
    queue: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)
    completion_tokens: int = 0  # summed over the choices
    done: bool = False
    choices: int = 1  # n: the deltas of every choice come through this one queue
    _ended: int = 0

    async def deltas(self) -> AsyncIterator[Delta]:
        """Every choice's deltas as they come; ends after the last choice's finishing delta."""
        while not self.done:
            delta = await self.queue.get()
            self._ended += delta.finish_reason is not None
            self.done = self._ended >= self.choices
            yield delta


@dataclass(slots=True)
class Tracked:
    submission: Submission
    stream: TextStream
    want_logprobs: bool
    submitted: float
    last_token: float | None = None
    index: int = 0  # its choice in the submission


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()  # more tokens that end the text, even with ignore_eos
    n: int = 1  # choices, each a sequence of its own (serving/choices.py)


def worker_sampling(gen: GenerationRequest, tokenizer: Tokenizer) -> SamplingParams:
    """gen.sampling with the stop ids that min_tokens masks (EOS unless ignored, and stop_token_ids), after
    checking that every token the request names is in the vocabulary."""
    sampling = gen.sampling
    if not (sampling.logit_bias or gen.stop_token_ids or sampling.min_tokens):
        return sampling
    vocab = tokenizer.vocab_size
    for name, ids in (("logit_bias", [t for t, _ in sampling.logit_bias]), ("stop_token_ids", gen.stop_token_ids)):
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"'{name}' names token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    if sampling.min_tokens <= 0:
        return sampling
    stops = set(gen.stop_token_ids) | (set() if gen.ignore_eos else set(tokenizer.eos_token_ids))
    return dataclasses.replace(sampling, stop_ids=tuple(sorted(stops)))
