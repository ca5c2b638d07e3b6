"""The vision model over KServe v2 (HTTP binary, HTTP JSON, gRPC) against the same module in-process, in one run.

    python benchmarks/vision_serve.py [--model demo|resnet18] [--clients 32] [--requests N] [--threads T]
                                      [--json FILE]

The model is `configs/vision.yaml`'s demo ResNet (a `py:` factory with seeded weights, 64 x 64 images, ~0.2 ms
an image here: the serving path's own cost per request sets the pace), or with `--model resnet18` the same
config serving a ResNet-18-sized classifier at 224 x 224 (~1.8 GFLOP an image), float32. In-process:
the factory's module at batch 1 and batch 32 with all T threads, before any server starts. Served: genie-serve
on that config (free ports, two workers of T // 2 threads each), N closed-loop clients of the real
`tritonclient` asyncio clients (`tritonclient.http.aio` with binary tensors, then with JSON tensors, then
`tritonclient.grpc.aio`), each sending one image per request. Client, router and workers share the machine's
cores, as they would. Every door's answers are checked against the module in-process (1e-4) before timing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from genie.benchmarks.pressure import CpuStall
from genie.benchmarks.stateless_serve import stop_server
from genie.serving import demo_models

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "vision.yaml"
MODEL = "resnet-demo"
WORKERS = 2  # what configs/vision.yaml launches
BATCH = 32
TOLERANCE = 1e-4
MODELS = {"demo": ("tiny_resnet", (3, 64, 64)), "resnet18": ("resnet18", (3, 224, 224))}


@dataclass(frozen=True)
class Row:
    system: str
    setting: str
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_stall: float | None = None

    @property
    def per_s(self) -> float:
        return self.images / self.seconds


def images(count: int, shape: tuple[int, ...] = MODELS["demo"][1]) -> np.ndarray:
    return torch.randn(count, *shape, generator=torch.Generator().manual_seed(5)).numpy()


def percentiles(latencies: list[float]) -> tuple[float, float]:
    if not latencies:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
    return float(p50), float(p99)


# In-process baseline

@torch.no_grad()
def inprocess_row(module, pool: np.ndarray, batch: int, count: int, threads: int) -> Row:
    torch.set_num_threads(threads)
    x = torch.from_numpy(pool)
    for i in range(3):  # warm-up at this shape
        module(pixel_values=x[:batch])
    latencies, stall, done = [], CpuStall(), 0
    t0 = time.perf_counter()
    while done < count:
        start = done % (len(pool) - batch + 1)
        t = time.perf_counter()
        module(pixel_values=x[start:start + batch])
        latencies.append(time.perf_counter() - t)
        done += batch
    seconds = time.perf_counter() - t0
    return Row("in-process", f"batch {batch}, {threads} threads", done, seconds, *percentiles(latencies),
               cpu_stall=stall.share())


# Served: one request per image, through tritonclient's asyncio clients

Infer = Callable[[np.ndarray], Awaitable[np.ndarray]]


def http_infer(client, binary: bool) -> Infer:
    import tritonclient.http as http

    async def infer(image: np.ndarray) -> np.ndarray:
        given = http.InferInput("pixel_values", list(image.shape), "FP32")
        given.set_data_from_numpy(image, binary_data=binary)
        wanted = [http.InferRequestedOutput("logits", binary_data=binary)]
        return (await client.infer(MODEL, [given], outputs=wanted)).as_numpy("logits")

    return infer


def grpc_infer(client) -> Infer:
    import tritonclient.grpc as grpc

    async def infer(image: np.ndarray) -> np.ndarray:
        given = grpc.InferInput("pixel_values", list(image.shape), "FP32")
        given.set_data_from_numpy(image)
        return (await client.infer(MODEL, [given])).as_numpy("logits")

    return infer


async def closed_loop(infer: Infer, pool: np.ndarray, n_clients: int, count: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()

    async def one_client() -> None:
        nonlocal errors
        while (i := next(counter)) < count:
            t = time.perf_counter()
            try:
                await infer(pool[i % len(pool)][None])
                latencies.append(time.perf_counter() - t)
            except Exception:  # the row reports how many failed; a failed request is not timed
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(n_clients)))
    return time.perf_counter() - t0, latencies, errors


async def served_rows(http_url: str, grpc_address: str, pool: np.ndarray, want: np.ndarray, n_clients: int,
                      count: int) -> list[Row]:
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    http_client = http_aio.InferenceServerClient(http_url, conn_limit=n_clients)
    grpc_client = grpc_aio.InferenceServerClient(grpc_address)
    doors = {"HTTP binary": http_infer(http_client, True), "HTTP JSON": http_infer(http_client, False),
             "gRPC": grpc_infer(grpc_client)}
    rows = []
    try:
        for name, infer in doors.items():
            got = np.concatenate(await asyncio.gather(*(infer(pool[i][None]) for i in range(len(want)))))
            worst = float(np.abs(got - want).max())
            if worst > TOLERANCE:
                raise SystemExit(f"{name}: served logits differ from in-process by {worst:.2e} > {TOLERANCE}")
            await closed_loop(infer, pool, n_clients, 2 * n_clients)  # warm-up, untimed
            stall = CpuStall()
            seconds, latencies, errors = await closed_loop(infer, pool, n_clients, count)
            rows.append(Row(f"genie-serve {name}", f"{n_clients} clients", len(latencies), seconds,
                            *percentiles(latencies), errors, stall.share()))
    finally:
        await http_client.close()
        await grpc_client.close()
    return rows


def server_config(home: Path, worker_threads: int, model: str = "demo") -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["source"] = f"py:genie.serving.demo_models:{MODELS[model][0]}"
    config["serving"] |= {"http_port": 0, "grpc_port": 0}
    config["workers"]["threads"] = worker_threads
    config.setdefault("registry", {})["home"] = str(home)
    return config


def table(rows: list[Row], baseline: Row) -> str:
    lines = [f"{'system':<26} {'setting':<22} {'images/s':>9} {'vs batch 32':>11} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'errors':>6} {'cpu stall':>9}"]
    for r in rows:
        stall = f"{r.cpu_stall:.0%}" if r.cpu_stall is not None else "n/a"
        lines.append(f"{r.system:<26} {r.setting:<22} {r.per_s:>9.1f} {r.per_s / baseline.per_s:>10.2f}x "
                     f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.errors:>6} {stall:>9}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=None, help="images per timed row (default 960; 192 "
                        "for resnet18)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from genie.serving.process import spawn_server

    args = parse_args(argv)
    factory, shape = MODELS[args.model]
    args.requests = args.requests or (960 if args.model == "demo" else 192)
    module, _ = getattr(demo_models, factory)()
    pool = images(64, shape)
    with torch.no_grad():
        want = module(pixel_values=torch.from_numpy(pool[:8])).logits.numpy()
    rows = [inprocess_row(module, pool, 1, args.requests // 4, args.threads),
            inprocess_row(module, pool, BATCH, args.requests, args.threads)]
    baseline = rows[1]
    print(f"# model {args.model} {shape}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vision.yaml"
        path.write_text(yaml.safe_dump(server_config(Path(tmp) / "home", max(1, args.threads // WORKERS), args.model)))
        server = spawn_server(path, timeout=300)
        try:
            rows += asyncio.run(served_rows(server.url.removeprefix("http://"), server.grpc_address, pool,
                                            want, args.clients, args.requests))
        finally:
            stop_server(server)
    print(table(rows, baseline))
    for door in ("HTTP binary", "gRPC"):
        row = next(r for r in rows if r.system.endswith(door))
        ratio = row.per_s / baseline.per_s
        print(f"target: {door} at {args.clients} clients >= 0.8x in-process batch {BATCH}: {ratio:.2f}x "
              f"({'met' if ratio >= 0.8 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"per_s": r.per_s} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
