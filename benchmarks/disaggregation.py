"""Prefill/decode disaggregation against colocated serving: tail ITL of running decodes while long prompts arrive.

    python -m genie.benchmarks.disaggregation [--decodes N] [--decode-len N] [--long-prompts N] [--long-len N]
        [--long-every S] [--dtype auto|float32|bfloat16] [--repeat R] [--only colocated|disaggregated]

genie-serve is started on `configs/llm.yaml`'s model (SmolLM2-135M-Instruct) on the same two local workers
(one thread each), twice: `serving.disaggregation: off` (two replicas, each prefills and decodes) and `on`
(replica-0 prefills, replica-1 decodes, one worker-to-worker KV handoff per request). Nothing else differs.

The mixed workload: --decodes streams with short prompts (64 random token ids) decode --decode-len tokens
each (`ignore_eos`); once all of them stream, --long-prompts prompts of --long-len random token ids arrive,
one every --long-every seconds, each asking for 4 tokens. Reported: the inter-token latency (gap between
streamed tokens) of the running decodes while long prompts are being served, p50/p99/max; the long prompts'
TTFT p50; decode tokens/s; and, from `GET /metrics`, the handoffs and their bytes measured against the
profile's prediction. Writes `benchmarks/results/disaggregation-DATE.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from .cli import Parser, default_output_dir
from .report import machine, write_json

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "llm.yaml"
START_TIMEOUT_S = 600.0
SETTINGS = ("colocated", "disaggregated")
SHORT_PROMPT = 64
LONG_OUTPUT = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="disaggregation", description=__doc__.splitlines()[0])
    p.add_argument("--decodes", type=int, default=8, help="running decode streams, default 8")
    p.add_argument("--decode-len", type=int, default=160, help="tokens each decode stream generates, default 160")
    p.add_argument("--long-prompts", type=int, default=6, help="long prompts arriving among them, default 6")
    p.add_argument("--long-len", type=int, default=1500, help="tokens per long prompt, default 1500")
    p.add_argument("--long-every", type=float, default=1.0, help="seconds between long prompts, default 1.0")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="default auto")
    p.add_argument("--repeat", type=int, default=1, help="runs of each setting, alternating (default 1)")
    p.add_argument("--only", choices=SETTINGS, help="start only one of the two servers")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts, default 0")
    p.add_argument("--output", type=Path, help="directory for the results JSON (default benchmarks/results/)")
    args = p.parse_args(argv)
    for flag in ("decodes", "decode_len", "long_prompts", "long_len", "repeat"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if not args.long_every >= 0:
        p.error(f"--long-every must be >= 0 seconds, got {args.long_every:g}")
    args.output = args.output or default_output_dir()
    return args


def server_config(args: argparse.Namespace, setting: str) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["dtype"] = args.dtype
    config["workers"] |= {"launch": 2, "threads": 1, "kv_cache_mib": 1024}
    config["serving"] |= {"http_port": 0, "grpc_port": None, "worker_timeout_s": 300.0,
                          "disaggregation": "on" if setting == "disaggregated" else "off"}
    return config


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(200, 40000) for _ in range(n)]


async def stream(session: aiohttp.ClientSession, url: str, prompt: list[int], max_tokens: int) -> list[float]:
    """One streamed completion; the arrival time of each chunk with text."""
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    times = []
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"the stream ended with an error: {chunk['error'].get('message', chunk)}")
                if chunk["choices"] and chunk["choices"][0].get("text"):
                    times.append(time.perf_counter())
    return times


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("genie_kv_handoff"):
            name, value = line.rsplit(" ", 1)
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def mixed(url: str, args: argparse.Namespace, seed: int) -> dict:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await stream(session, url, random_ids(rng, 16), 2)  # warm-up, untimed
        before = await metrics(session, url)
        decodes = [asyncio.create_task(stream(session, url, random_ids(rng, SHORT_PROMPT), args.decode_len))
                   for _ in range(args.decodes)]
        started = time.perf_counter()
        await asyncio.sleep(0.5)  # the decodes are admitted and streaming before the first long prompt
        window_start = time.perf_counter()
        longs, sent = [], []
        for i in range(args.long_prompts):
            sent.append(time.perf_counter())
            longs.append(asyncio.create_task(stream(session, url, random_ids(rng, args.long_len), LONG_OUTPUT)))
            if i + 1 < args.long_prompts:
                await asyncio.sleep(args.long_every)
        long_times = await asyncio.gather(*longs)
        window_end = time.perf_counter()
        decode_times = await asyncio.gather(*decodes)
        finished = time.perf_counter()
        after = await metrics(session, url)
    gaps = [b - a for times in decode_times for a, b in zip(times, times[1:], strict=False)
            if window_start <= b <= window_end]
    if any(len(t) < args.decode_len // 2 for t in decode_times):
        print("warning: some decode streams ended early", file=sys.stderr)
    if not gaps:
        raise RuntimeError("no decode token arrived while the long prompts ran; raise --decode-len")
    gaps.sort()
    handoffs = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {
        "itl_p50_ms": 1e3 * statistics.median(gaps),
        "itl_p99_ms": 1e3 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "itl_max_ms": 1e3 * gaps[-1],
        "gaps": len(gaps),
        "long_ttft_p50_ms": 1e3 * statistics.median(t[0] - s for t, s in zip(long_times, sent, strict=True)),
        "decode_tokens_per_s": sum(len(t) for t in decode_times) / (finished - started),
        "handoffs": handoffs.get('genie_kv_handoffs_total{outcome="delivered"}', 0.0),
        "handoff_fallbacks": handoffs.get('genie_kv_handoffs_total{outcome="fallback"}', 0.0),
        "handoff_bytes": handoffs.get("genie_kv_handoff_bytes_total", 0.0),
        "handoff_predicted_bytes": handoffs.get("genie_kv_handoff_predicted_bytes_total", 0.0),
    }


async def measure(args: argparse.Namespace, setting: str, seed: int) -> dict:
    from genie.serving.process import spawn_server

    from .stateless_serve import stop_server

    with tempfile.TemporaryDirectory(prefix="genie-disagg-") as tmp:
        path = Path(tmp) / "genie.yaml"
        path.write_text(yaml.safe_dump(server_config(args, setting)))
        server = await asyncio.to_thread(spawn_server, path, START_TIMEOUT_S)
        try:
            return {"setting": setting, **await mixed(server.url, args, seed)}
        finally:
            await asyncio.to_thread(stop_server, server)


def table(rows: list[dict]) -> str:
    lines = [f"{'setting':<14} {'ITL p50 ms':>10} {'ITL p99 ms':>10} {'ITL max ms':>10} {'long TTFT p50 ms':>16} "
             f"{'decode tok/s':>12} {'handoffs':>8} {'bytes measured/predicted':>24}"]
    for r in rows:
        ratio = f"{r['handoff_bytes'] / r['handoff_predicted_bytes']:.4f}" if r["handoff_predicted_bytes"] else "-"
        lines.append(f"{r['setting']:<14} {r['itl_p50_ms']:>10.1f} {r['itl_p99_ms']:>10.1f} {r['itl_max_ms']:>10.1f} "
                     f"{r['long_ttft_p50_ms']:>16.1f} {r['decode_tokens_per_s']:>12.1f} {r['handoffs']:>8.0f} "
                     f"{ratio:>24}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    settings = [args.only] if args.only else list(SETTINGS)
    rows = []
    for i in range(args.repeat):
        for setting in settings if i % 2 == 0 else settings[::-1]:
            rows.append(await measure(args, setting, args.seed + i))
            print(table(rows[-1:]).splitlines()[1], flush=True)
    print(f"# {args.decodes} decode streams x {args.decode_len} tokens; {args.long_prompts} prompts of "
          f"{args.long_len} tokens every {args.long_every:g} s; dtype {args.dtype}; 2 workers x 1 thread")
    print(table(rows))
    mean = {s: statistics.mean(r["itl_p99_ms"] for r in rows if r["setting"] == s) for s in settings}
    summary = {}
    if len(mean) == 2:
        summary["itl_p99_disaggregated_over_colocated"] = mean["disaggregated"] / mean["colocated"]
        print(f"ITL p99 of running decodes, disaggregated / colocated: "
              f"{summary['itl_p99_disaggregated_over_colocated']:.3f}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.output / f"disaggregation-{stamp}.json"
    write_json(out, {"benchmark": "disaggregation", "machine": machine(), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows, "summary": summary})
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
