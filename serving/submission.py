"""What passes between a front door and the router: a request to generate, its handle, and its deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from genie.errors import GenieError
from genie.workers.contract import SamplingParams, SeqResult

from .tokenizer import TextStream


@dataclass(slots=True)
class Delta:
    """What a client receives after a step: new text, the ids behind it, and the end when it comes."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SeqResult] = field(default_factory=list)  # per token, when asked for
    finish_reason: str | None = None
    failure: GenieError | None = None  # why it ended early, with its type (and so its HTTP/gRPC status)

    @property
    def error(self) -> str | None:
        return None if self.failure is None else str(self.failure)


@dataclass(slots=True)
class Submission:
    """A front door's handle on one request."""

    request_id: str
    prompt_tokens: int
    queue: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)
    completion_tokens: int = 0
    done: bool = False

    async def deltas(self) -> AsyncIterator[Delta]:
        while not self.done:
            delta = await self.queue.get()
            self.done = delta.finish_reason is not None
            yield delta


@dataclass(slots=True)
class Tracked:
    submission: Submission
    stream: TextStream
    want_logprobs: bool
    submitted: float
    last_token: float | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
