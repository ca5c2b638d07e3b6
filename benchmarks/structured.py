"""The cost of constrained decoding: output tokens/s with every stream free against half of them json_schema
constrained, on one genie-serve, same prompts, measured in one run.

    python -m genie.benchmarks.structured [--concurrency 32] [--output-len 96] [--rounds 3] [--workers 2]

The model is `configs/llm.yaml`'s (SmolLM2-135M-Instruct) on W local workers, free ports, no gRPC. After an
untimed warm-up (which also compiles the schema on the workers), each round sends C concurrent streaming chat
requests twice: (a) all unconstrained, (b) the same prompts with every other one constrained by a JSON schema
(response_format json_schema: nested object, enum, bounded integer, array). Every request runs greedy with
`ignore_eos` to exactly --output-len tokens, so both settings generate the same number of tokens; a constrained
one whose JSON is complete before that only gets EOS from there on, so the share of its tokens drawn under a
live guide is measured too (the same constrained requests again, without ignore_eos). Rounds alternate a, b,
so drift on a shared machine falls on both. Prints output tokens/s of each setting (the mean over rounds),
their ratio b / a (target: >= 0.90, a cost of 10 % at most), and how many constrained answers validate; the
exit status is 1 when one does not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "llm.yaml"
START_TIMEOUT_S = 600.0
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "kind": {"enum": ["cat", "dog", "bird", "fish"]},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                  "floor": {"type": "integer", "minimum": 0, "maximum": 99}},
                 "required": ["city", "floor"]},
        "toys": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    },
    "required": ["name", "kind", "home", "toys"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="structured", description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=32, help="streams in flight, default 32")
    p.add_argument("--output-len", type=int, default=96, help="tokens each request generates, default 96")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (a) then (b), default 3")
    p.add_argument("--workers", type=int, default=2, help="genie-serve worker processes, default 2")
    args = p.parse_args(argv)
    for flag in ("concurrency", "output_len", "rounds", "workers"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    return args


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Describe pet number {i} as JSON: its name, kind, home and toys."}]
            for i in range(n)]


def server_config(args: argparse.Namespace) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    config["serving"] |= {"http_port": 0, "grpc_port": None, "max_running_requests": max(64, args.concurrency)}
    config["workers"] |= {"launch": args.workers}
    return config


@contextlib.asynccontextmanager
async def genie_server(args: argparse.Namespace) -> AsyncIterator[str]:
    from genie.serving.process import spawn_server

    from .stateless_serve import stop_server

    with tempfile.TemporaryDirectory(prefix="genie-structured-") as tmp:
        path = Path(tmp) / "genie.yaml"
        path.write_text(yaml.safe_dump(server_config(args)))
        server = await asyncio.to_thread(spawn_server, path, START_TIMEOUT_S)
        try:
            yield server.url
        finally:
            await asyncio.to_thread(stop_server, server)


async def stream(client, model: str, messages: list[dict], tokens: int, guided: bool,
                 ignore_eos: bool = True) -> tuple[str, int]:
    """The text and the completion tokens of one streamed request."""
    extra = {"response_format": FORMAT} if guided else {}
    chunks = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": ignore_eos}, **extra)
    text, used = [], 0
    async for chunk in chunks:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return "".join(text), used


@dataclass(frozen=True, slots=True)
class Burst:
    tok_s: float
    texts: list[str]  # the constrained answers


async def burst(client, model: str, args: argparse.Namespace, guided: bool) -> Burst:
    """C concurrent streams; every other one constrained when `guided`."""
    asks = prompts(args.concurrency)
    flags = [guided and i % 2 == 0 for i in range(len(asks))]
    start = time.perf_counter()
    results = await asyncio.gather(*(stream(client, model, m, args.output_len, f) for m, f in zip(asks, flags)))
    elapsed = time.perf_counter() - start
    return Burst(sum(r[1] for r in results) / elapsed, [r[0] for r, f in zip(results, flags) if f])


async def live_share(client, model: str, args: argparse.Namespace) -> float:
    """The share of a constrained answer's tokens drawn under a live guide: the same greedy requests without
    ignore_eos end at the EOS the finished JSON leaves as the only choice."""
    asks = prompts(args.concurrency)[::2]
    results = await asyncio.gather(*(stream(client, model, m, args.output_len, True, ignore_eos=False)
                                     for m in asks))
    return sum(used for _, used in results) / (len(asks) * args.output_len)


def valid(text: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


async def run(args: argparse.Namespace) -> int:
    import openai

    model = yaml.safe_load(CONFIG.read_text())["model"]["name"]
    async with genie_server(args) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        try:
            await asyncio.gather(*(stream(client, model, m, 8, True) for m in prompts(2 * args.workers)))
            free, guided = [], []
            for _ in range(args.rounds):
                free.append(await burst(client, model, args, guided=False))
                guided.append(await burst(client, model, args, guided=True))
            live = await live_share(client, model, args)
        finally:
            await client.close()
    a, b = (sum(r.tok_s for r in runs) / len(runs) for runs in (free, guided))
    texts = [t for r in guided for t in r.texts]
    ok = sum(valid(t.rstrip("\n")) for t in texts)
    print(f"# structured outputs: {args.concurrency} streams, {args.output_len} tokens each (greedy, ignore_eos), "
          f"{args.workers} workers, {args.rounds} rounds")
    for label, rate, runs in (("(a) all unconstrained", a, free), ("(b) half json_schema", b, guided)):
        print(f"{label:28} {rate:9.1f} output tok/s   rounds: {', '.join(f'{r.tok_s:.1f}' for r in runs)}")
    print(f"ratio b / a                  {b / a:9.3f}   (cost {100 * (1 - b / a):.1f} %; target <= 10 %)")
    print(f"constrained answers valid    {ok} of {len(texts)}; {100 * live:.0f} % of their tokens were drawn "
          "under a live guide (the rest: EOS only, once the JSON is complete)")
    bad = next((t for t in texts if not valid(t.rstrip("\n"))), None)
    if bad is not None:
        print(f"for example, not valid: {bad[:300]!r}")
    return 0 if ok == len(texts) else 1


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
