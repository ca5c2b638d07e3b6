"""The client API on a ResNet-style CNN: local eager, local torch.compile, and genie.remote, in one run.

    python benchmarks/client_api.py [--iters 40] [--batches 1,8] [--no-serve] [--json FILE]

The model is configs/vision.yaml's demo ResNet (genie.serving.demo_models:tiny_resnet: HF ResNet, seeded
weights, [N, 3, 64, 64] -> [N, 10], float32). Everything uses one intra-op thread: the local runs
(torch.set_num_threads(1)) and the worker. genie.remote is measured straight to one `genie-worker` process
over gRPC (the link token in hand) and, unless --no-serve, through genie-serve (vision.yaml, one worker):
HTTP to genie-serve, which relays each program RPC to its worker over gRPC. Each mode reports p50/p95
latency of a forward after its first call, RPCs and bytes per forward (the client's transport counters; the
worker's own counters say the same in the tests), and the first call's time (compile / lower + place + bind).
A sweep over 5 batch sizes reports what each mode compiles again. Every output is checked against eager
(1e-5) before timing. The per-op remote baseline (benchmarks/client_per_op.py) ships each ATen op of the same
graph as its own RunProgram to the same worker, tensors both ways on every call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

import genie
import genie.client as gc
from genie.benchmarks.client_per_op import per_op_remote
from genie.serving.demo_models import tiny_resnet

REPO = Path(__file__).resolve().parent.parent
SWEEP = (1, 2, 4, 8, 16)


def timed(fn, x: torch.Tensor, iters: int) -> dict[str, float]:
    with torch.no_grad():
        started = time.perf_counter()
        fn(x)
        first = time.perf_counter() - started
        laps = []
        for _ in range(iters):
            started = time.perf_counter()
            fn(x)
            laps.append(time.perf_counter() - started)
    laps.sort()
    return {"first_s": first, "p50_ms": 1e3 * statistics.median(laps),
            "p95_ms": 1e3 * laps[min(len(laps) - 1, int(0.95 * len(laps)))]}


def check(fn, model, x: torch.Tensor) -> None:
    with torch.no_grad():
        got, want = fn(x), model(x)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)


def traffic(session: gc.Session | None, fn, x: torch.Tensor, iters: int = 5) -> dict[str, float]:
    if session is None:
        return {"rpcs": 0, "bytes": 0}
    t = session.transport
    before = (t.rpcs, t.bytes_sent + t.bytes_received)
    with torch.no_grad():
        for _ in range(iters):
            fn(x)
    return {"rpcs": (t.rpcs - before[0]) / iters, "bytes": (t.bytes_sent + t.bytes_received - before[1]) / iters}


def run_mode(name: str, make, model, batches: list[int], iters: int, session: gc.Session | None) -> list[dict]:
    torch._dynamo.reset()
    gc.reset()
    fn = make()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        row = {"mode": name, "batch": batch} | timed(fn, x, iters) | traffic(session, fn, x)
        check(fn, model, x)
        rows.append(row)
    return rows


def sweep(make) -> dict[str, int]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    gc.reset()
    counters.clear()
    fn = make()
    with torch.no_grad():
        for batch in SWEEP:
            fn(torch.randn(batch, 3, 64, 64))
    report = gc.report()
    return {"dynamo_graphs": int(counters["stats"]["unique_graphs"]), "genie_programs": report["programs"],
            "recompiles": report["recompiles"], "graph_breaks": report["graph_breaks"]}


def start_serve():
    from genie.serving.process import spawn_server

    config = yaml.safe_load((REPO / "configs" / "vision.yaml").read_text())
    config["serving"] |= {"http_port": 0, "grpc_port": None, "client_programs": True}
    config["workers"] |= {"launch": 1, "threads": 1}
    path = Path(tempfile.mkdtemp()) / "genie.yaml"
    path.write_text(yaml.safe_dump(config))
    return spawn_server(path, timeout=300)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--no-serve", action="store_true", help="skip the genie-serve relay")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # genie.remote registers its model on first use (client/registration.py): in a throwaway registry here,
    # unless one is named, so the first call's time includes a cold registration and analysis
    os.environ.setdefault("GENIE_HOME", tempfile.mkdtemp(prefix="genie-bench-"))
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    model, _ = tiny_resnet()

    from genie.workers.process import spawn_worker

    worker = spawn_worker(threads=1)
    server = None if args.no_serve else start_serve()
    try:
        direct = genie.connect(worker=worker.address, token=worker.token)
        modes = [("eager", lambda: model, None), ("torch.compile", lambda: torch.compile(model), None),
                 ("genie.remote (to worker)", lambda: genie.remote(model, session=direct), direct)]
        relay = None
        if server is not None:
            relay = gc.Session(gc.transport.HttpRelay(server.url))
            modes.append(("genie.remote (via genie-serve)", lambda: genie.remote(model, session=relay), relay))
        rows = [row for name, make, s in modes for row in run_mode(name, make, model, batches, args.iters, s)]
        sweeps = {name: sweep(make) for name, make, _ in modes[1:3]}
        rows += run_mode("per-op remote (to worker)", lambda: per_op_remote(model, direct), model, batches,
                         max(3, args.iters // 8), direct)
    finally:
        worker.stop()
        if server is not None:
            server.stop()
    print(f"{'mode':32} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'first s':>8} {'rpcs':>5} {'bytes':>9}")
    for r in rows:
        print(f"{r['mode']:32} {r['batch']:5d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['first_s']:8.2f} "
              f"{r['rpcs']:5.1f} {r['bytes']:9.0f}")
    for name, s in sweeps.items():
        print(f"sweep over batch sizes {SWEEP}: {name}: {s}")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows,
                                         "sweeps": sweeps, "torch": torch.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
