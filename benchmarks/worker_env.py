"""Which worker environment serves batch-1 decode fastest: several genie-serve instances, one per variant of the
workers' environment (OpenMP wait policy, spin count, affinity), all up at once and driven in turn, so every
variant sees the same machine load, against the engine in-process in the same run.

    python benchmarks/worker_env.py [--runs 12] [--variant passive:OMP_WAIT_POLICY=PASSIVE ...]
                                    [--output benchmarks/results/worker-env-<UTC time>.json]

A variant is LABEL or LABEL:KEY=VALUE,KEY=VALUE; "default" (the environment as it is) always runs first. Requests go one at a
time, greedy, the same prompt ids, so differences are the workers' threads between steps: spinning OpenMP
threads answer the next step sooner but take the core the router and the HTTP front door need. The table is
printed and written, with the load average before and after, as a results JSON (`--output`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import aiohttp
import torch
import yaml

from genie.benchmarks.router_overhead import (REPO, SOURCE, _load, _p50, _p90, command_line, default_output, engine_run,
                                              path_stats, registered_model, served_run, write_results)

# genie-worker leaves libgomp's default (spin a while after a parallel region, then sleep): measured against
# PASSIVE (sleep at once) and shorter spins with this script, see benchmarks/README.md. ACTIVE spins forever, so
# an idle worker keeps its cores busy.
DEFAULT_VARIANTS = ("passive:OMP_WAIT_POLICY=PASSIVE", "spin30k:GOMP_SPINCOUNT=30000")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, pairs = text.partition(":")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    return label, env


def server_config(home: Path, dtype: str, threads: int, launch: int) -> dict:
    return {
        "model": {"name": "smollm2", "source": SOURCE, "register_if_missing": True, "dtype": dtype},
        "registry": {"home": str(home)},
        "workers": {"launch": launch, "kv_cache_mib": 64, "threads": threads},
        "serving": {"http_port": 0, "grpc_port": None},
    }


async def interleaved(frag, urls: list[str], prompt: list[int], new_tokens: int, runs: int):
    """Path 0 is the engine in-process, path i > 0 the server of variant i - 1; the order rotates per round."""
    paths: list[tuple[list[float], list[float]]] = [([], []) for _ in range(len(urls) + 1)]

    async def local_step(seq) -> int:
        return frag.step([seq])[0].token_id

    async def local_release(sid: str) -> None:
        frag.release([sid])

    async with aiohttp.ClientSession() as session:
        n = len(paths)
        for run in range(runs + 2):  # two warm-up rounds
            for path in ((run + k) % n for k in range(n)):
                if path == 0:
                    ttft, gaps = await engine_run(local_step, local_release, prompt, new_tokens, f"s{run}")
                else:
                    ttft, gaps = await served_run(session, urls[path - 1], prompt, new_tokens)
                if run >= 2:
                    paths[path][0].append(ttft)
                    paths[path][1].extend(gaps)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads per worker")
    ap.add_argument("--launch", type=int, default=1, help="workers per server")
    ap.add_argument("--variant", action="append", help="LABEL[:KEY=VALUE,...] (repeatable)")
    ap.add_argument("--output", type=Path, default=None,
                    help="results JSON (default benchmarks/results/worker-env-<UTC time>.json)")
    args = ap.parse_args()
    load_before = os.getloadavg()

    from genie.serving.process import spawn_server
    from genie.workers.engine import FragmentSpec, load_fragment

    variants = [("default", {})] + [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    home = Path(os.environ.get("GENIE_HOME", REPO / ".cache" / "genie-home-bench"))
    model_dir = registered_model(home)
    prompt = [(17 * i + 100) % 40000 + 100 for i in range(args.prompt_tokens)]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(server_config(home, args.dtype, args.threads, args.launch)))
        servers = []
        try:
            servers += [spawn_server(path, timeout=300, env=env) for _, env in variants]
            frag = load_fragment(FragmentSpec("bench", str(model_dir), dtype=args.dtype, kv_cache_bytes=64 << 20))
            paths = asyncio.run(interleaved(frag, [s.url for s in servers], prompt, args.new_tokens, args.runs))
        finally:
            for server in servers:
                server.stop()

    load_after = os.getloadavg()
    print(f"SmolLM2-135M, dtype {args.dtype}, {args.launch} worker(s) x {args.threads} threads, prompt "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens, {args.runs} runs each, rotating; load average "
          f"{_load(load_before)} before, {_load(load_after)} after")
    print(f"{'path':<44}{'TTFT p50':>10}{'ITL p50':>10}{'ITL p90':>10}{'/engine':>9}")
    names = ["engine in-process"] + [f"served, {label} {env or ''}" for label, env in variants]
    base = _p50(paths[0][1])
    rows = []
    for name, (ttft, itl) in zip(names, paths):
        print(f"{name[:43]:<44}{_p50(ttft):>10.2f}{_p50(itl):>10.2f}{_p90(itl):>10.2f}{_p50(itl) / base:>8.3f}x")
        rows.append({"path": name, **path_stats(ttft, itl), "itl_over_engine": _p50(itl) / base})
    labels = [None] + variants
    for row, variant in zip(rows, labels):
        row["variant"] = None if variant is None else {"label": variant[0], "env": variant[1]}
    write_results(args.output or default_output("worker-env"), {
        "tool": "benchmarks/worker_env.py", "command": command_line(),
        "model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "threads": args.threads, "launch": args.launch,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
        "load_average_before": load_before, "load_average_after": load_after, "paths": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
