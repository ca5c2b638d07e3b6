"""Where a served Infer call's time goes, per plan fragment: predicted step time against the worker's own spans
and the call as its caller saw it, in one run.

    python benchmarks/served_timing.py [--models clip,recsys] [--requests 40] [--direct 30] [--json FILE]

For each model, two instrumented workers (benchmarks/worker_timing.py: the real genie-worker, one thread, with
each Infer's spans written down) are started here, and a genie-serve subprocess attaches to them
(`workers.addresses`), configured as served_calibration.py configures it. Then, per fragment at batch 8:

1. served: one client sends `--requests` requests of 8 examples through genie-serve (KServe v2 HTTP, real
   tritonclient); the router times each Infer call (GET /v1/genie/plans, `median_call_s_at_most_common_batch`);
2. direct: with genie-serve idle, this process calls the same loaded fragment `--direct` times over its own
   WorkerClient, one call at a time, and times each call;
3. in-process: the same fragment module built here, as a worker builds it (cost_calibration.fragments), timed
   over `--direct` forwards on one thread: back to back (as the start-up probes run), and each after a `--gap`
   ms pause (time.sleep: the thread idles as a worker does between calls), which shows what a forward costs
   when it does not follow another at once.

The worker's spans (see worker_timing.py): servicer (its Infer handler), engine (decode, forward, encode on the
engine thread), forward wall / CPU / run-queue wait. Medians, except `fastest` columns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import yaml

from genie.auth import LINK_TOKEN_ENV, new_link_token
from genie.benchmarks import cost_calibration as cc
from genie.benchmarks.served_calibration import MODELS, config, send
from genie.benchmarks.stateless_serve import stop_server
from genie.semantic import PlanOptions, analyze, plan
from genie.childproc import spawn
from genie.workers.process import READY_PREFIX, WorkerProcess

ROWS = 8
CASES = {c.name: c for c in cc.CASES}
GAP_MS = 2.0
SPANS = ("forward_s", "forward_cpu_s", "forward_runqueue_s", "engine_s", "queued_s", "servicer_s")


def timed_worker(timings: Path, root: str, token: str) -> WorkerProcess:
    cmd = [sys.executable, "-m", "genie.benchmarks.worker_timing", "--timings", str(timings),
           "--listen", "127.0.0.1:0", "--device", "cpu", "--threads", "1", "--parent-pid", str(os.getpid()),
           "--artifact-root", root]
    return spawn(cmd, "genie-worker", READY_PREFIX, 120.0, env={LINK_TOKEN_ENV: token}, cls=WorkerProcess)


def attached_config(name: str, home: str, addresses: list[str], token_file: str) -> dict:
    file, _, strategy, _ = MODELS[name]
    cfg = config(file, strategy, home)
    cfg["workers"] = {"launch": 0, "addresses": addresses, "link_token_file": token_file, "device": "cpu"}
    return cfg


def in_process(case: cc.Case) -> dict[str, tuple]:
    """fragment_id and role -> (the StatelessFragment built here as its worker builds it, its inputs at ROWS)."""
    model, example = case.factory()
    p = plan(analyze(model, example, case.name), cc.probed_cluster(case.memory_mib),
             PlanOptions(strategy=case.strategy))
    built = {}
    for f, frag, x in cc.fragments(model, p, case.make(ROWS)):
        built[f.fragment_id] = built.setdefault(f.role, (frag, x))
    return built


async def direct_calls(address: str, token: str, fragment_id: str, inputs: dict, n: int) -> list[float]:
    from genie.workers.client import WorkerClient

    client = WorkerClient(address, timeout=60, token=token)
    try:
        await client.infer(fragment_id, inputs)  # one unmeasured call, as the served phase had its warm-up
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await client.infer(fragment_id, inputs)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await client.close()


def spans(lines: list[dict], fragment_id: str, since: float, until: float) -> dict[str, float | None]:
    got = [x for x in lines if x["fragment_id"] == fragment_id and x["rows"] == ROWS and since <= x["t"] <= until]
    out: dict[str, float | None] = {"calls": len(got)}
    for key in SPANS:
        out[key] = statistics.median(x[key] for x in got) if got else None
    out["fastest_forward_s"] = min((x["forward_s"] for x in got), default=None)
    return out


def measure(name: str, requests: int, direct: int, gap_s: float) -> list[dict]:
    from genie.serving.process import spawn_server

    case = CASES[name]
    _, model_name, _, make = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        token = new_link_token()
        token_file = Path(tmp) / "link-token"
        token_file.write_text(token + "\n")
        logs = [Path(tmp) / f"w{i}.jsonl" for i in range(2)]
        workers = [timed_worker(p, str(home), token) for p in logs]
        server = None
        try:
            addresses = [w.address for w in workers]
            path = Path(tmp) / "genie.yaml"
            path.write_text(yaml.safe_dump(attached_config(name, str(home), addresses, str(token_file))))
            server = spawn_server(path, timeout=300)
            served_from = time.time()
            send(server.url, model_name, make, requests)
            served_to = time.time()
            with urllib.request.urlopen(f"{server.url}/v1/genie/plans", timeout=30) as resp:
                (report,) = json.loads(resp.read())["data"]
            modules = in_process(case)
            rows = []
            for f in report["fragments"]:
                m = f["measured"]
                if m.get("most_common_batch") != ROWS:
                    continue  # a replica the one client never reached
                frag, inputs = modules.get(f["fragment_id"]) or modules[f["role"]]
                direct_from = time.time()
                called = asyncio.run(direct_calls(f["worker"], token, f["fragment_id"], inputs, direct))
                direct_to = time.time()
                back_to_back, paused = cc.timed(frag, inputs, direct, 0.0), cc.timed(frag, inputs, direct, gap_s)
                rows.append({"model": name, "fragment": f["fragment_id"], "worker": f["worker"],
                             "predicted_s": m.get("predicted_step_s_calibrated_at_that_batch"),
                             "in_process_median_s": statistics.median(back_to_back),
                             "in_process_fastest_s": min(back_to_back),
                             "in_process_after_gap_s": statistics.median(paused), "gap_s": gap_s,
                             "served_router_call_s": m.get("median_call_s_at_most_common_batch"),
                             "served_compute_seconds_s": m.get("median_step_s_at_most_common_batch"),
                             "direct_client_call_s": statistics.median(called),
                             "_windows": (served_from, served_to, direct_from, direct_to)})
        finally:
            if server is not None:
                stop_server(server)
            for w in workers:
                w.stop(5.0)
        lines = [json.loads(x) for p in logs if p.exists() for x in p.read_text().splitlines() if x.strip()]
    for r in rows:
        s0, s1, d0, d1 = r.pop("_windows")
        r["served"] = spans(lines, r["fragment"], s0, s1)
        r["direct"] = spans(lines, r["fragment"], d0, d1)
    return rows


def us(v: float | None) -> str:
    return f"{v * 1e6:.0f}" if v is not None else "n/a"


def table(rows: list[dict]) -> None:
    print("| model | fragment | how | predicted | in-process median (fastest) / after a gap "
          "| forward wall median (fastest) "
          "| forward CPU | forward run-queue | engine thread | queued for it | worker handler | caller's call |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for how, call in (("served", r["served_router_call_s"]), ("direct", r["direct_client_call_s"])):
            s = r[how]
            print(f"| {r['model']} | {r['fragment']} | {how} ({s['calls']} calls) | {us(r['predicted_s'])} | "
                  f"{us(r['in_process_median_s'])} ({us(r['in_process_fastest_s'])}) / "
                  f"{us(r['in_process_after_gap_s'])} | {us(s['forward_s'])} "
                  f"({us(s['fastest_forward_s'])}) | {us(s['forward_cpu_s'])} | {us(s['forward_runqueue_s'])} | "
                  f"{us(s['engine_s'])} | {us(s['queued_s'])} | {us(s['servicer_s'])} | {us(call)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="clip,recsys")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--direct", type=int, default=30)
    ap.add_argument("--gap", type=float, default=GAP_MS, help="ms of pause before each in-process 'after a gap' "
                    "forward")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the in-process forwards run on one thread, as each worker does
    load_before = os.getloadavg()
    rows = [r for name in args.models.split(",") for r in measure(name, args.requests, args.direct, args.gap / 1000)]
    load_after = os.getloadavg()
    print(f"batch {ROWS}, one thread per worker, gap {args.gap:g} ms; load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f} (1 min); times in us, medians unless marked")
    table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
