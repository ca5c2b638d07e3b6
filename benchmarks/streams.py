"""Our own continuous-batching loop, for the rows that bypass genie-serve's router.

Up to `streams` requests run at once; each iteration is one batched step in which new requests bring their
whole prompt and running ones one token, and a finished request's place goes to the next waiting one at
once. What a step means (in-process engine, pinned KV on a worker, KV carried along, recomputed context) is
the `Stepper`'s business.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from .workload import Workload


@dataclass(slots=True)
class Stream:
    """One request in flight. `fed` tokens of prompt + generated are in the model's KV (or were, last step)."""

    seq_id: str
    index: int  # of the prompt in the workload
    prompt: tuple[int, ...]
    sent_s: float
    generated: list[int] = field(default_factory=list)
    fed: int = 0
    first_s: float | None = None
    state: object = None  # whatever the stepper carries between steps (blind-kv: the KV tensor)

    @property
    def context(self) -> list[int]:
        return [*self.prompt, *self.generated]

    @property
    def pending(self) -> list[int]:
        """Tokens the model has not seen yet: the whole prompt at first, then the last sampled token."""
        return self.context[self.fed :]


class Stepper(Protocol):
    async def step(self, streams: list[Stream]) -> list[int]:
        """One batched step over `streams`; returns each one's next token and advances `fed` where it keeps KV."""
        ...

    async def finish(self, streams: list[Stream]) -> None:
        """Frees whatever the finished `streams` still hold."""
        ...


@dataclass(frozen=True, slots=True)
class StreamRecord:
    index: int  # of the prompt in the workload
    prompt_tokens: int
    output: tuple[int, ...]  # the generated ids
    ttft_s: float
    e2e_s: float

    @property
    def output_tokens(self) -> int:
        return len(self.output)

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass(frozen=True, slots=True)
class StreamsRun:
    records: tuple[StreamRecord, ...]
    duration_s: float
    steps: int

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.records)

    def outputs(self) -> list[tuple[int, ...]]:
        """Generated ids in prompt order."""
        return [r.output for r in sorted(self.records, key=lambda r: r.index)]


async def run_streams(stepper: Stepper, work: Workload, streams: int, tag: str) -> StreamsRun:
    """Runs every prompt of `work` to completion with at most `streams` in flight."""
    waiting = deque(enumerate(work.token_ids))
    active: list[Stream] = []
    records: list[StreamRecord] = []
    steps = 0
    start = time.perf_counter()
    while waiting or active:
        while waiting and len(active) < streams:
            index, prompt = waiting.popleft()
            active.append(Stream(f"{tag}-{index}", index, prompt, time.perf_counter()))
        tokens = await stepper.step(active)
        steps += 1
        now = time.perf_counter()
        for stream, token in zip(active, tokens, strict=True):
            stream.generated.append(token)
            stream.first_s = stream.first_s or now
        done = [s for s in active if work.finished(s.generated)]
        if done:
            await stepper.finish(done)
            active = [s for s in active if not work.finished(s.generated)]
            records.extend(_record(s, now) for s in done)
    return StreamsRun(tuple(records), time.perf_counter() - start, steps)


def _record(stream: Stream, now: float) -> StreamRecord:
    first = stream.first_s if stream.first_s is not None else now
    return StreamRecord(stream.index, len(stream.prompt), tuple(stream.generated), first - stream.sent_s,
                        now - stream.sent_s)
