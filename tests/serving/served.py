"""Small helpers for tests that talk to a real genie-serve over HTTP and look at its worker processes."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


def get_json(url: str, timeout: float = 30) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get_text(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def post_json(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (genie-serve's workers), from /proc."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(p) for p in f.read().split()]
    return sorted(kids)


def listening_port_pids(pids: list[int]) -> dict[int, int]:
    """{TCP port listened on: pid} for these processes, from /proc (which worker process serves which address)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    ports: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


async def stream_chat(session, url: str, body: dict, started=None, started_after: int = 40) -> tuple[int, str, str | None]:
    """POSTs a streaming chat completion with an aiohttp session and reads its SSE events: (HTTP status, the
    text, the finish reason or "error: MESSAGE" for an in-band error). `started` (an asyncio.Event) is set once
    more than `started_after` characters have arrived."""
    text, reason = "", None
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return resp.status, text, f"error: {event['error']['message']}"
            for choice in event["choices"]:
                text += choice["delta"].get("content") or ""
                reason = choice.get("finish_reason") or reason
            if started is not None and len(text) > started_after:
                started.set()
        return resp.status, text, reason


def recommender_rows(n: int, seed: int, table_rows, dense: int):
    """`n` requests for a demo recommender: (sparse ids, one per table within its rows, int64; dense features)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, r, n) for r in table_rows], axis=1).astype(np.int64)
    return sparse, rng.standard_normal((n, dense)).astype(np.float32)


def recommender_infer(client, module, model: str, sparse, dense):
    """One KServe v2 call to a demo recommender through tritonclient (`module`: its http or grpc package)."""
    given = [module.InferInput("sparse_ids", list(sparse.shape), "INT64"),
             module.InferInput("dense", list(dense.shape), "FP32")]
    given[0].set_data_from_numpy(sparse)
    given[1].set_data_from_numpy(dense)
    return client.infer(model, given).as_numpy("scores")


def worker_stats(addresses: list[str], token: str) -> list:
    """Each worker's Stats, read over its link with the link token."""
    import asyncio

    from genie.workers.client import WorkerClient

    async def read() -> list:
        clients = [WorkerClient(a, timeout=10, token=token) for a in addresses]
        try:
            return await asyncio.gather(*(c.stats() for c in clients))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    return asyncio.run(read())
