"""One load level of a run: N requests at a fixed concurrency (closed loop) or Poisson arrivals (open loop).

With conversations (`--dataset multiturn`) the unit of load is the conversation: N of them in flight, or
conversations arriving at R/s; each sends its turns one after another, every turn timed as a request of its
own. The server's prefix-cache counters are read before and after the level (see `server_metrics`).

A run stops early when `interrupt` is set (Ctrl-C): requests in flight are cancelled and not counted, and
what finished is returned, so the caller can save it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from tqdm import tqdm

from .client import RequestRecord, exchange, request_body
from .datasets import Conversation, request_count
from .options import LoadMode, ServeOptions
from .prompts import Prompt
from .server_metrics import CacheUse, cache_use, scrape

READ_BUFFER_BYTES = 1 << 20  # an SSE line longer than aiohttp's 64 KiB default would fail the request

Item = Prompt | Conversation  # one request, or one conversation's requests in turn
Send = Callable[[Item], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LevelRun:
    level: float  # concurrency, or request rate in requests/s
    records: tuple[RequestRecord, ...]  # in the order they finished
    duration_s: float
    interrupted: bool
    cancelled: int  # requests in flight when interrupted, not counted in `records`
    prefix_cache: CacheUse | None = None  # the server's prefix-cache counters over the level, when it has them
    replies: dict[str, str] = field(default_factory=dict)  # prompt id -> generated text, of the requests that succeeded


def level_name(mode: LoadMode, level: float) -> str:
    return f"concurrency {level:g}" if mode is LoadMode.CONCURRENCY else f"rate {level:g}/s"


async def _closed_loop(send: Send, prompts: Sequence[Item], concurrency: int) -> None:
    pending = iter(prompts)  # shared by the workers; safe because they interleave only at awaits

    async def worker() -> None:
        for prompt in pending:
            await send(prompt)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(prompts))):
            group.create_task(worker())


async def _open_loop(send: Send, prompts: Sequence[Item], rate: float, cap: int | None, seed: int) -> None:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(cap) if cap else None

    async def gated(prompt: Item) -> None:
        if gate is None:
            return await send(prompt)
        async with gate:
            await send(prompt)

    async with asyncio.TaskGroup() as group:
        due = time.perf_counter()
        for prompt in prompts:
            # Waiting for the next Poisson arrival is the load pattern itself, not a stand-in for work.
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            group.create_task(gated(prompt))
            due += rng.expovariate(rate)


def _session(opts: ServeOptions) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)  # the load level, not the pool, decides what is in flight
    return aiohttp.ClientSession(headers=_headers(opts), connector=connector, read_bufsize=READ_BUFFER_BYTES)


def _headers(opts: ServeOptions) -> dict[str, str]:
    return {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}


@dataclass(slots=True)
class _Level:
    """What one level's requests share while it runs; they interleave only at awaits."""

    opts: ServeOptions
    session: aiohttp.ClientSession
    bar: tqdm
    start: float
    finish: float
    records: list[RequestRecord] = field(default_factory=list)
    in_flight: int = 0
    replies: dict[str, str] = field(default_factory=dict)

    def _done(self, record: RequestRecord) -> None:
        self.records.append(record)
        self.bar.update(1)
        if not record.ok:
            self.bar.set_postfix(errors=sum(not r.ok for r in self.records), refresh=False)

    async def send(self, prompt: Prompt) -> str | None:
        """One request, recorded; returns the text the server generated, or None when the request failed."""
        opts = self.opts
        body = request_body(opts.endpoint, opts.model, prompt, opts.output_len, opts.temperature, opts.ignore_eos)
        url = f"{opts.url}{opts.endpoint.path}"
        self.in_flight += 1
        record, reply = await exchange(self.session, url, body, prompt, self.start, opts.timeout_s)
        self.in_flight -= 1
        self.finish = time.perf_counter()
        self._done(record)
        if record.ok:
            self.replies[record.prompt_id] = reply
        return reply if record.ok else None

    async def converse(self, conversation: Conversation) -> None:
        """Its turns one after another, each with the replies so far; a failed turn ends the conversation."""
        replies: list[str] = []
        for turn in range(len(conversation.questions)):
            reply = await self.send(conversation.prompt(replies))
            if reply is None:
                return self._skip(conversation, turn + 1)
            replies.append(reply)

    def _skip(self, conversation: Conversation, first: int) -> None:
        for turn in range(first, len(conversation.questions)):
            error = f"not sent: turn {first - 1} of its conversation failed, so its history is unknown"
            self._done(RequestRecord(f"{conversation.id}-turn{turn}", time.perf_counter() - self.start, error=error))

    async def item(self, item: Item) -> None:
        if isinstance(item, Conversation):
            await self.converse(item)
        else:
            await self.send(item)


async def run_level(opts: ServeOptions, level: float, items: Sequence[Item], interrupt: asyncio.Event) -> LevelRun:
    """Every prompt once, or every conversation turn by turn, at this load level."""
    bar = tqdm(total=request_count(items), desc=level_name(opts.mode, level), unit="req", disable=not opts.progress,
               dynamic_ncols=True, leave=True)
    before = await scrape(opts.url, _headers(opts))
    async with _session(opts) as session:
        now = time.perf_counter()
        state = _Level(opts, session, bar, now, now)
        if opts.mode is LoadMode.CONCURRENCY:
            work = asyncio.ensure_future(_closed_loop(state.item, items, int(level)))
        else:
            work = asyncio.ensure_future(_open_loop(state.item, items, level, opts.max_concurrency, opts.seed))
        interrupted = await _until_done(work, interrupt)
    bar.close()
    duration = (time.perf_counter() if interrupted else state.finish) - state.start
    use = cache_use(before, await scrape(opts.url, _headers(opts)))
    return LevelRun(level, tuple(state.records), duration, interrupted, state.in_flight if interrupted else 0, use,
                    state.replies)


async def _until_done(work: asyncio.Future, interrupt: asyncio.Event) -> bool:
    """Waits for `work` or `interrupt`, whichever comes first; True when interrupted (`work` is cancelled)."""
    stop = asyncio.ensure_future(interrupt.wait())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    interrupted = not work.done()
    for task in (work, stop):
        task.cancel()
    await asyncio.gather(work, stop, return_exceptions=True)
    if not interrupted:
        work.result()  # a bug in the loops above surfaces here instead of vanishing
    return interrupted
