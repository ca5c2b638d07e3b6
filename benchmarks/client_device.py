"""Record-only interception on the `genie` device against eager CPU, per op, in one run (issue 17, must-show 3).

    python benchmarks/client_device.py [--blocks 100] [--reps 5] [--no-worker] [--json FILE]

The program is eager code of 10 ops per block (mm, add, relu, mul, softmax, add, mean, sub, tanh, sum) over
[32, 64] float32 tensors, `--blocks` times: 1,000 ops at the default. Each op call is timed on its own
(perf_counter_ns around it) on CPU tensors (eager, computing) and on genie tensors (recorded only, nothing
runs), alternating the two `--reps` times; both report p50 / p95 / p99 per op. The genie runs are warm: the
device's metadata cache holds each op signature after the first rep, and the first (cold) rep is reported
apart. Then, unless --no-worker, the recorded program is materialised on a real `genie-worker` process over
gRPC: RPCs of the first and of a repeated materialisation, bytes, wall time, and parity with eager (1e-5);
once as today (a program without weights is loaded and run in one LoadProgram) and once, on another fresh
worker, with the three calls of before (LoadProgram + BindWeights + RunProgram; both workers run today's
size check, so the two differ in round trips only). Last, LoadProgram's size check on that program in
this process: every node on meta (before) against output shapes learnt per op signature (now).
One intra-op thread everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

OPS_PER_BLOCK = 10


def program(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, blocks: int, laps: list[int]) -> torch.Tensor:
    now = time.perf_counter_ns
    h = x
    for _ in range(blocks):
        t0 = now()
        y = torch.mm(h, w)
        t1 = now()
        y = y + b
        t2 = now()
        y = torch.relu(y)
        t3 = now()
        y = y * 0.5
        t4 = now()
        s = torch.softmax(y, dim=-1)
        t5 = now()
        y = y + s
        t6 = now()
        m = y.mean(dim=-1, keepdim=True)
        t7 = now()
        y = y - m
        t8 = now()
        h = torch.tanh(y)
        t9 = now()
        total = h.sum()
        t10 = now()
        laps += [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t9 - t8, t10 - t9]
    return h + 0 * total


def quantiles(laps_ns: list[int]) -> dict[str, float]:
    laps = sorted(laps_ns)
    pick = lambda q: laps[min(len(laps) - 1, int(q * len(laps)))] / 1e3  # noqa: E731
    return {"ops": len(laps), "p50_us": statistics.median(laps) / 1e3, "p95_us": pick(0.95), "p99_us": pick(0.99),
            "mean_us": sum(laps) / len(laps) / 1e3}


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 64, generator=g), torch.randn(64, 64, generator=g) / 8, torch.randn(64, generator=g)


def interception(blocks: int, reps: int) -> tuple[dict, dict, dict, torch.Tensor]:
    from genie.client.device import device

    dev = device()
    x, w, b = inputs()
    gx, gw, gb = x.to(dev), w.to(dev), b.to(dev)
    cold: list[int] = []
    out = program(gx, gw, gb, blocks, cold)  # fills the metadata cache: each signature is learnt once
    cpu_laps: list[int] = []
    genie_laps: list[int] = []
    with torch.no_grad():
        for _ in range(reps):  # alternate, so load on the machine falls on both alike
            program(x, w, b, blocks, cpu_laps)
            out = program(gx, gw, gb, blocks, genie_laps)
    return quantiles(cpu_laps), quantiles(genie_laps), quantiles(cold), out


def materialise_on_worker(blocks: int, one_call: bool, loads: list) -> dict:
    """The recorded program materialised on a fresh genie-worker, first and repeated. one_call: a program
    without weights is loaded and run in one LoadProgram (today); else LoadProgram + BindWeights + RunProgram
    (the way before, kept as Session.one_call_first_run = False for this baseline). LoadProgram requests are
    appended to `loads`."""
    import genie
    from genie.client.device import device
    from genie.workers.process import spawn_worker

    x, w, b = inputs()
    want = program(x, w, b, blocks, [])
    worker = spawn_worker(threads=1)
    try:
        session = genie.connect(worker=worker.address, token=worker.token)
        session.one_call_first_run = one_call
        t = session.transport
        call = t.call
        t.call = lambda rpc, req: (loads.append(req) if rpc == "LoadProgram" else None) or call(rpc, req)
        rows = {}
        dev = device()
        for name in ("first", "repeated"):  # the same eager code again: the same program, placed already
            tensor = program(x.to(dev), w.to(dev), b.to(dev), blocks, [])
            before = (t.rpcs, t.bytes_sent + t.bytes_received)
            started = time.perf_counter()
            got = tensor.cpu()
            rows[name] = {"wall_ms": 1e3 * (time.perf_counter() - started), "rpcs": t.rpcs - before[0],
                          "bytes": t.bytes_sent + t.bytes_received - before[1]}
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        session.close()
    finally:
        worker.stop()
    return rows


def size_check(request, reps: int = 3) -> dict:
    """LoadProgram's size check on the recorded program, in this process: every node on meta (before) against
    output shapes learnt per op signature (cold: a fresh table; warm: the table after one program)."""
    from genie.workers.programs import parse_program, sizes
    from genie.workers.programs.limits import ProgramLimits

    prog = parse_program(request.program, request.program_id)
    limits = ProgramLimits()
    rows: dict[str, list[float]] = {"every_node_ms": [], "learnt_cold_ms": [], "learnt_warm_ms": []}
    for _ in range(reps):  # alternating, so load on the machine falls on all three alike
        for name in rows:
            if name == "learnt_cold_ms":
                sizes._learnt.clear()
            started = time.perf_counter()
            sizes.check_sizes(prog, limits, learn=name != "every_node_ms")
            rows[name].append(1e3 * (time.perf_counter() - started))
    out = {name: statistics.median(v) for name, v in rows.items()}
    out["nodes"] = len(prog.nodes)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100, help=f"{OPS_PER_BLOCK} ops each")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-worker", action="store_true", help="skip materialising on a genie-worker")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cpu, genie_dev, cold, out = interception(args.blocks, args.reps)
    print(f"{args.blocks * OPS_PER_BLOCK}-op eager program, per op, {args.reps} alternating reps each")
    print(f"{'mode':34} {'p50 us':>8} {'p95 us':>8} {'p99 us':>8} {'mean us':>8}")
    for name, q in (("eager CPU (computes)", cpu), ("genie device, record only (warm)", genie_dev),
                    ("genie device, record only (cold)", cold)):
        print(f"{name:34} {q['p50_us']:8.2f} {q['p95_us']:8.2f} {q['p99_us']:8.2f} {q['mean_us']:8.2f}")
    print(f"genie / eager at p95: {genie_dev['p95_us'] / cpu['p95_us']:.2f}x; target: genie p95 <= 10 us")
    worker = checks = None
    if not args.no_worker:
        loads: list = []
        # today's path first: whatever this process caches from the first run favours the baseline
        worker = {"one_call": materialise_on_worker(args.blocks, True, loads),
                  "three_calls": materialise_on_worker(args.blocks, False, [])}
        for mode, rows in worker.items():
            for name, row in rows.items():
                print(f"materialise, {mode} ({name}): {row['rpcs']} RPCs, {row['bytes']} bytes, "
                      f"{row['wall_ms']:.1f} ms; equal to eager within 1e-5")
        checks = size_check(loads[0])
        n = checks["nodes"]
        print(f"LoadProgram size check, {n} nodes (median of 3): every node on meta {checks['every_node_ms']:.1f} ms "
              f"({1e3 * checks['every_node_ms'] / n:.0f} us/node); learnt signatures cold "
              f"{checks['learnt_cold_ms']:.1f} ms ({1e3 * checks['learnt_cold_ms'] / n:.0f} us/node), warm "
              f"{checks['learnt_warm_ms']:.1f} ms ({1e3 * checks['learnt_warm_ms'] / n:.0f} us/node)")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "torch": torch.__version__, "blocks": args.blocks, "reps": args.reps,
                                         "eager_cpu": cpu, "genie_record_warm": genie_dev,
                                         "genie_record_cold": cold, "materialise": worker,
                                         "size_check": checks, "loadavg": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
