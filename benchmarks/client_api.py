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

The timed laps alternate the modes (eager, compile, remote, ..., eager, compile, remote, ...; the slow per-op
baseline every 8th round), so that every mode meets the same load on this shared machine; `x eager` is each
mode's p50 over eager's p50 from those same rounds. The first calls are timed apart, one mode at a time after a
Dynamo reset. Results JSON: --json, default benchmarks/results/client-api-<UTC time>.json.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import genie
import genie.client as gc
from genie.benchmarks.client_per_op import per_op_remote
from genie.serving.demo_models import tiny_resnet

REPO = Path(__file__).resolve().parent.parent
SWEEP = (1, 2, 4, 8, 16)
SLOW_EVERY = 8  # rounds between two laps of a slow mode (the per-op baseline: ~100 ms a forward)


@dataclass
class Mode:
    name: str
    make: Callable[[], Any]
    session: gc.Session | None
    slow: bool = False
    fn: Any = None


def inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))


def check(fn, model, x: torch.Tensor) -> None:
    got, want = fn(x), model(x)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-5)


def first_calls(mode: Mode, model, batches: list[int]) -> dict[int, float]:
    """Builds the mode after a Dynamo reset and times its first call at each batch size (compile, or lower +
    place + bind), then checks its output against eager."""
    torch._dynamo.reset()
    gc.reset()
    mode.fn = mode.make()
    firsts = {}
    for batch in batches:
        x = inputs(batch)
        started = time.perf_counter()
        mode.fn(x)
        firsts[batch] = time.perf_counter() - started
        check(mode.fn, model, x)
    return firsts


def alternated(modes: list[Mode], batch: int, iters: int) -> dict[str, list[float]]:
    """Laps of one forward each, the modes taking turns round by round."""
    x = inputs(batch)
    for mode in modes:  # each mode's code compiled again after the other modes' resets (not timed)
        mode.fn(x)
    laps: dict[str, list[float]] = {mode.name: [] for mode in modes}
    for i in range(iters):
        for mode in modes:
            if mode.slow and i % SLOW_EVERY:
                continue
            started = time.perf_counter()
            mode.fn(x)
            laps[mode.name].append(time.perf_counter() - started)
    return laps


def percentiles(laps: list[float]) -> dict[str, float]:
    laps = sorted(laps)
    return {"p50_ms": 1e3 * statistics.median(laps), "p95_ms": 1e3 * laps[min(len(laps) - 1, int(0.95 * len(laps)))],
            "laps": len(laps)}


def traffic(session: gc.Session | None, fn, x: torch.Tensor, iters: int = 5) -> dict[str, float]:
    if session is None:
        return {"rpcs": 0, "bytes": 0}
    t = session.transport
    before = (t.rpcs, t.bytes_sent + t.bytes_received)
    for _ in range(iters):
        fn(x)
    return {"rpcs": (t.rpcs - before[0]) / iters, "bytes": (t.bytes_sent + t.bytes_received - before[1]) / iters}


def measure(modes: list[Mode], model, batches: list[int], iters: int) -> list[dict]:
    firsts = {mode.name: first_calls(mode, model, batches) for mode in modes}
    rows = []
    for batch in batches:
        load = os.getloadavg()[0]
        laps = alternated(modes, batch, iters)
        eager = statistics.median(laps[modes[0].name])
        for mode in modes:
            row = {"mode": mode.name, "batch": batch, "first_s": firsts[mode.name][batch]}
            row |= percentiles(laps[mode.name])
            row |= {"x_eager": statistics.median(laps[mode.name]) / eager, "load_before": load,
                    "load_after": os.getloadavg()[0]} | traffic(mode.session, mode.fn, inputs(batch))
            rows.append(row)
    return rows


def sweep(make) -> dict[str, int]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    gc.reset()
    counters.clear()
    fn = make()
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


def print_rows(rows: list[dict], sweeps: dict[str, dict]) -> None:
    print(f"{'mode':32} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'x eager':>7} {'first s':>8} {'rpcs':>5} "
          f"{'bytes':>9} {'load':>10}")
    for r in rows:
        print(f"{r['mode']:32} {r['batch']:5d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['x_eager']:7.2f} "
              f"{r['first_s']:8.2f} {r['rpcs']:5.1f} {r['bytes']:9.0f} {r['load_before']:4.2f}-{r['load_after']:4.2f}")
    for name, s in sweeps.items():
        print(f"sweep over batch sizes {SWEEP}: {name}: {s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--no-serve", action="store_true", help="skip the genie-serve relay")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = args.json or REPO / "benchmarks" / "results" / f"client-api-{stamp}.json"
    # genie.remote registers its model on first use (client/registration.py): in a throwaway registry here,
    # unless one is named, so the first call's time includes a cold registration and analysis
    os.environ.setdefault("GENIE_HOME", tempfile.mkdtemp(prefix="genie-bench-"))
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    model, _ = tiny_resnet()

    from genie.workers.process import spawn_worker

    load = os.getloadavg()
    worker = spawn_worker(threads=1)
    server = None if args.no_serve else start_serve()
    try:
        direct = genie.connect(worker=worker.address, token=worker.token)
        modes = [Mode("eager", lambda: model, None), Mode("torch.compile", lambda: torch.compile(model), None),
                 Mode("genie.remote (to worker)", lambda: genie.remote(model, session=direct), direct)]
        if server is not None:
            relay = gc.Session(gc.transport.HttpRelay(server.url))
            modes.append(Mode("genie.remote (via genie-serve)", lambda: genie.remote(model, session=relay), relay))
        modes.append(Mode("per-op remote (to worker)", lambda: per_op_remote(model, direct), direct, slow=True))
        with torch.no_grad():
            rows = measure(modes, model, batches, args.iters)
            sweeps = {mode.name: sweep(mode.make) for mode in modes[1:3]}
    finally:
        worker.stop()
        if server is not None:
            server.stop()
    print_rows(rows, sweeps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "utc": stamp,
                               "command": " ".join(["benchmarks/client_api.py", *(argv or sys.argv[1:])]),
                               "load_before": load, "load_after": os.getloadavg(), "rows": rows,
                               "sweeps": sweeps, "torch": torch.__version__}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
