"""One load level of a run: N requests at a fixed concurrency (closed loop) or Poisson arrivals (open loop).

A run stops early when `interrupt` is set (Ctrl-C): requests in flight are cancelled and not counted, and
what finished is returned, so the caller can save it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
from tqdm import tqdm

from .client import RequestRecord, request_body, send_request
from .options import LoadMode, ServeOptions
from .prompts import Prompt

READ_BUFFER_BYTES = 1 << 20  # an SSE line longer than aiohttp's 64 KiB default would fail the request

Send = Callable[[Prompt], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class LevelRun:
    level: float  # concurrency, or request rate in requests/s
    records: tuple[RequestRecord, ...]  # in the order they finished
    duration_s: float
    interrupted: bool
    cancelled: int  # requests in flight when interrupted, not counted in `records`


def level_name(mode: LoadMode, level: float) -> str:
    return f"concurrency {level:g}" if mode is LoadMode.CONCURRENCY else f"rate {level:g}/s"


async def _closed_loop(send: Send, prompts: Sequence[Prompt], concurrency: int) -> None:
    pending = iter(prompts)  # shared by the workers; safe because they interleave only at awaits

    async def worker() -> None:
        for prompt in pending:
            await send(prompt)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(prompts))):
            group.create_task(worker())


async def _open_loop(send: Send, prompts: Sequence[Prompt], rate: float, cap: int | None, seed: int) -> None:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(cap) if cap else None

    async def gated(prompt: Prompt) -> None:
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
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
    connector = aiohttp.TCPConnector(limit=0)  # the load level, not the pool, decides what is in flight
    return aiohttp.ClientSession(headers=headers, connector=connector, read_bufsize=READ_BUFFER_BYTES)


async def run_level(opts: ServeOptions, level: float, prompts: Sequence[Prompt], interrupt: asyncio.Event) -> LevelRun:
    records: list[RequestRecord] = []
    in_flight = 0
    url = f"{opts.url}{opts.endpoint.path}"
    bar = tqdm(total=len(prompts), desc=level_name(opts.mode, level), unit="req", disable=not opts.progress,
               dynamic_ncols=True, leave=True)
    async with _session(opts) as session:
        start = finish = time.perf_counter()

        async def send(prompt: Prompt) -> None:
            nonlocal in_flight, finish
            body = request_body(opts.endpoint, opts.model, prompt, opts.output_len, opts.temperature, opts.ignore_eos)
            in_flight += 1
            record = await send_request(session, url, body, prompt, start, opts.timeout_s)
            in_flight -= 1
            finish = time.perf_counter()
            records.append(record)
            bar.update(1)
            if not record.ok:
                bar.set_postfix(errors=sum(not r.ok for r in records), refresh=False)

        if opts.mode is LoadMode.CONCURRENCY:
            work = asyncio.ensure_future(_closed_loop(send, prompts, int(level)))
        else:
            work = asyncio.ensure_future(_open_loop(send, prompts, level, opts.max_concurrency, opts.seed))
        stop = asyncio.ensure_future(interrupt.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        interrupted = not work.done()
        for task in (work, stop):
            task.cancel()
        await asyncio.gather(work, stop, return_exceptions=True)
        if not interrupted:
            work.result()  # a bug in the loops above surfaces here instead of vanishing
    bar.close()
    duration = (time.perf_counter() if interrupted else finish) - start
    return LevelRun(level, tuple(records), duration, interrupted, in_flight if interrupted else 0)
