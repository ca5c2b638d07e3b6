"""An in-process HTTP door for tests: the real app, Router, Scheduler and SmolLM2 tokenizer over the fake
worker of test_grpc_front; served by aiohttp's TestServer with the same handler options as `start_http`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from test_grpc_front import MODEL, WORDS, FakeWorker

from genie.serving.http import HttpState, make_app
from genie.serving.metrics import Metrics
from genie.serving.replica import Replica, Stage
from genie.serving.router import Router
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.serving.tokenizer import Tokenizer


@dataclass
class HttpFront:
    client: TestClient
    state: HttpState
    worker: FakeWorker

    def chat(self, content: str = "Hi", **fields: Any) -> dict[str, Any]:
        return {"model": MODEL.name, "messages": [{"role": "user", "content": content}], **fields}


def make_state(tokenizer: Tokenizer, num_blocks: int = 64, **fields: Any) -> tuple[HttpState, FakeWorker, Router]:
    """num_blocks of 16 tokens: below 16 blocks one sequence holds less than the model's context."""
    config = SchedulerConfig(
        max_batch_tokens=256, max_running_requests=8, max_queue=16, prefill_chunk_tokens=128,
        max_context=MODEL.max_context,
    )
    worker = FakeWorker(tokenizer.encode(WORDS))
    replica = Replica("r0", [Stage("worker-0", worker, "f0")], num_blocks=num_blocks, warm=True)  # type: ignore[arg-type]
    metrics = Metrics()
    router = Router(Scheduler(config, {"r0": num_blocks}, block_size=16), {"r0": replica}, tokenizer, metrics)
    return HttpState(router, tokenizer, MODEL, metrics, **fields), worker, router


@asynccontextmanager
async def http_front(tokenizer: Tokenizer, num_blocks: int = 64, **fields: Any) -> AsyncIterator[HttpFront]:
    state, worker, router = make_state(tokenizer, num_blocks, **fields)
    loop_task = asyncio.create_task(router.run())
    server = TestServer(make_app(state), host="127.0.0.1")
    await server.start_server(access_log=None)
    client = TestClient(server)
    await client.start_server()
    try:
        yield HttpFront(client, state, worker)
    finally:
        await client.close()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
