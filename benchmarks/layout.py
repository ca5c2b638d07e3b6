"""Which workers x threads layout serves the default model best on this machine, measured, not assumed.

    python benchmarks/layout.py [--rounds 2] [--layouts configs/llm-2x1.yaml,configs/llm-1x2.yaml]

Each layout is a config (the first is the baseline). For every round, each layout in turn (the order flips each
round, so both see the same drift of a shared machine) gets a fresh genie-serve, then `genie-bench serve` runs
the scenarios below against it, one after the other, and the server stops. Every run is kept; the ratios compare
each layout's mean over the rounds with the baseline's.

- prefill-heavy: issue 16's workload, random 128-token prompts, 64 output tokens, 8 in flight, 32 prompts;
- c1 and c32: short prompts at 1 and 32 streams, 64 output tokens.

All requests are greedy with ignore_eos, so every layout generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCENARIOS = {
    "prefill-heavy": ["--input-len", "128", "--output-len", "64", "--concurrency", "8", "--num-prompts", "32"],
    "c1": ["--input-len", "32", "--output-len", "64", "--concurrency", "1", "--num-prompts", "8"],
    "c32": ["--input-len", "32", "--output-len", "64", "--concurrency", "32", "--num-prompts", "64"],
}
METRICS = ("output_throughput", "ttft_p50_ms", "itl_p99_ms", "tpot_p50_ms")
STALL_MS = 250.0  # an inter-token gap longer than this is counted as a stall in the results


def start(config: Path, port: int, home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GENIE_HOME": str(home)}
    cmd = [str(BIN / "genie-serve"), "--config", str(config), "--http-port", str(port), "--grpc-port", "0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"genie-serve on {config} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(1)  # polling a starting server, not standing in for work
    proc.kill()
    raise SystemExit(f"genie-serve on {config} was not ready within 600 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench(port: int, label: str, args: list[str], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.json"))
    cmd = [str(BIN / "genie-bench"), "serve", "--url", f"http://127.0.0.1:{port}", "--model", "smollm2",
           "--label", label, "--ignore-eos", "--no-progress", "--output", str(out), *args]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    (path,) = set(out.glob("*.json")) - before
    level = json.loads(path.read_text())["levels"][0]
    summary = level["summary"]
    if summary["errors"]:
        raise SystemExit(f"{label}: {summary['errors']} requests failed: {summary['error_messages']}")
    return {"output_throughput": summary["output_throughput"], "ttft_p50_ms": summary["ttft"]["p50_ms"],
            "itl_p99_ms": summary["itl"]["p99_ms"], "tpot_p50_ms": summary["tpot"]["p50_ms"],
            "completed": summary["completed"], "file": str(path), **gap_report(level["requests"])}


def gap_report(requests: list[dict]) -> dict:
    """Where the long inter-token gaps are (the results files go with the run's temporary folder): how many
    exceed STALL_MS, and the longest few with their request, token index (1: between the first two tokens) and
    the time since the run began. A p99 counts how many gaps are long as much as how long they are."""
    gaps = [(1000 * g, r["prompt_id"], i + 1, r["start_s"] + r["ttft_s"] + sum(r["itl_s"][: i + 1]))
            for r in requests if r.get("itl_s") for i, g in enumerate(r["itl_s"])]
    longest = sorted(gaps, reverse=True)[:8]
    return {"itl_gaps": len(gaps), "itl_gaps_over_stall": sum(g[0] > STALL_MS for g in gaps), "stall_ms": STALL_MS,
            "longest_gaps": [{"ms": round(ms, 1), "request": rid, "token": i, "at_s": round(at, 3)}
                             for ms, rid, i, at in longest]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layouts", default="configs/llm-2x1.yaml,configs/llm-1x2.yaml",
                        help="configs to compare, comma-separated; the first is the baseline")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    opts = parser.parse_args()
    layouts = [Path(p) for p in opts.layouts.split(",")]
    scenarios = opts.scenarios.split(",")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="genie-layout-") as tmp:
        home, log = Path(tmp) / "home", Path(tmp) / "serve.log"
        for rnd in range(opts.rounds):
            for config in layouts if rnd % 2 == 0 else layouts[::-1]:
                proc = start(config, opts.port, home, log)
                try:
                    for name in scenarios:
                        row = bench(opts.port, f"{config.stem}-{name}", SCENARIOS[name], Path(tmp) / "results")
                        runs.append({"layout": config.stem, "round": rnd, "scenario": name, **row})
                        print(f"round {rnd} {config.stem:10s} {name:13s} " +
                              "  ".join(f"{m} {row[m]:.1f}" for m in METRICS) +
                              f"  gaps>{STALL_MS:.0f}ms {row['itl_gaps_over_stall']}/{row['itl_gaps']}", flush=True)
                finally:
                    stop(proc)
    base = layouts[0].stem
    print(f"\nmean over {opts.rounds} rounds, and each layout / {base}:")
    ratios = {}
    for config in layouts:
        for name in scenarios:
            mine = {m: statistics.mean(r[m] for r in runs if r["layout"] == config.stem and r["scenario"] == name)
                    for m in METRICS}
            ref = {m: statistics.mean(r[m] for r in runs if r["layout"] == base and r["scenario"] == name)
                   for m in METRICS}
            ratios[f"{config.stem}/{name}"] = {m: mine[m] / ref[m] for m in METRICS}
            print(f"{config.stem:10s} {name:13s} " + "  ".join(
                f"{m} {mine[m]:.1f} ({mine[m] / ref[m]:.2f}x)" for m in METRICS))
    out = REPO / "benchmarks" / "results" / f"layout-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    out.write_text(json.dumps({"tool": "benchmarks/layout.py", "baseline": base, "rounds": opts.rounds,
                               "load_average": os.getloadavg(), "runs": runs, "ratios": ratios}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
