"""One generation request as the scheduler tracks it: its tokens, where its KV lives, and how far it got.

Life of a request: queued -> prefill -> decode -> finished | aborted. Preemption sends a running request
back to queued; it keeps its output and is prefilled again from prompt + output, so its next sampled token
continues the same text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from genie.workers.contract import SamplingParams


class Phase(StrEnum):
    QUEUED = "queued"  # waiting for admission; holds no KV blocks
    PREFILL = "prefill"  # admitted; its prompt (plus any earlier output) is being written to KV in chunks
    DECODE = "decode"  # one new token per step
    FINISHED = "finished"  # ended by EOS, a limit, a stop string or an error
    ABORTED = "aborted"  # the client went away


class FinishReason(StrEnum):
    """Why a request ended; the first two are OpenAI's `finish_reason` values."""

    STOP = "stop"  # EOS token or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # the request could not run (see Request.detail)


@dataclass(slots=True, eq=False)
class Request:
    """Mutable scheduler state of one request; the scheduler is its only writer."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 256
    eos_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()  # end the request like EOS, ignore_eos or not
    output_ids: list[int] = field(default_factory=list)
    phase: Phase = Phase.QUEUED
    num_computed: int = 0  # tokens of all_ids already in KV on its replica
    replica: str | None = None  # set at first admission; the request stays pinned there for life
    finish_reason: FinishReason | None = None
    detail: str | None = None  # a sentence for the user when the reason alone does not explain the end
    arrival: int = -1  # order of add(); set by the scheduler
    admitted: int = -1  # order of the latest admission; the newest admitted is preempted first
    num_preemptions: int = 0
    num_migrations: int = 0  # moves to another replica after its replica failed
    handoff: str | None = None  # disaggregation: "waiting" for a decode replica, "moving" while its KV is sent
    handoff_to: str | None = None  # the decode replica its KV is being sent to

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return len(self.output_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet in KV: the rest of the prefill, or 1 (the last sampled token) in decode."""
        return self.num_tokens - self.num_computed

    @property
    def is_done(self) -> bool:
        return self.phase in (Phase.FINISHED, Phase.ABORTED)

    def pending_ids(self, n: int) -> list[int]:
        """The next n tokens to write to KV, starting at num_computed."""
        start = self.num_computed
        if start < self.num_prompt:
            ids = self.prompt_ids[start : start + n]
            return ids + self.output_ids[: n - len(ids)]
        offset = start - self.num_prompt
        return self.output_ids[offset : offset + n]
