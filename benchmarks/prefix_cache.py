"""Prefix caching off against on: genie-serve started twice on the same model and settings, the same prompts.

    python -m genie.benchmarks.prefix_cache [--dataset prefix|distinct|multiturn] [--prefix-len N]
        [--num-prompts N] [--concurrency C] [--output-len N] [--turns T] [--workers W] [--only off|on]

The model is `configs/llm.yaml`'s (SmolLM2-135M-Instruct) on W local workers (default 2), free ports, no gRPC;
the only difference between the two servers is `serving.prefix_caching: false`, then `true`. Each server
starts with an empty cache, gets one short untimed warm-up request on unrelated text, then one closed-loop
level of C requests in flight (with multiturn: C conversations) with `ignore_eos`, so every request
generates exactly --output-len tokens. Datasets:

- prefix: one system prompt of --prefix-len tokens shared by every request, and a distinct short question each;
- distinct: the same shape with a system prompt of its own per request, so nothing is shared (0 % hits): the
  cost of caching when it cannot help;
- multiturn: conversations of --turns turns, each turn resending the history with the server's real replies.

Prints TTFT p50/p99, ITL p99, output tokens/s, requests/s and the server's prefix-cache hit rate (from
`GET /metrics`) for each server, then the on/off ratios, and writes
`benchmarks/results/prefix-cache-DATASET-DATE.json`. Bad flags end with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .cli import Parser, default_output_dir
from .datasets import DEFAULT_TURNS, MULTITURN_SYSTEM_LEN, PREFIX_LEN, conversations, distinct_prompts, prefix_prompts
from .options import Dataset, Endpoint, LoadMode, ServeOptions, Slo
from .prompts import synthetic_prompts
from .report import hit_rate_text, level_json, machine, write_json
from .runner import Item, LevelRun, run_level
from .summary import Summary, summarize

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "llm.yaml"
START_TIMEOUT_S = 600.0
EXIT_FAILED = 1


class Setting(enum.StrEnum):
    OFF = "off"
    ON = "on"


class Workload(enum.StrEnum):
    PREFIX = "prefix"
    DISTINCT = "distinct"
    MULTITURN = "multiturn"


BUILD: dict[Workload, Callable[[argparse.Namespace], list[Item]]] = {
    Workload.PREFIX: lambda a: list(prefix_prompts(a.num_prompts, a.prefix_len, a.seed)),
    Workload.DISTINCT: lambda a: list(distinct_prompts(a.num_prompts, a.prefix_len, a.seed)),
    Workload.MULTITURN: lambda a: list(conversations(a.num_prompts, a.turns, a.prefix_len, a.seed)),
}
SERVE_DATASET = {Workload.PREFIX: Dataset.PREFIX, Workload.DISTINCT: Dataset.DEFAULT,
                 Workload.MULTITURN: Dataset.MULTITURN}


@dataclass(frozen=True, slots=True)
class Measured:
    setting: Setting
    opts: ServeOptions
    run: LevelRun
    summary: Summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="prefix_cache", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=[w.value for w in Workload], default="prefix", help="default prefix")
    p.add_argument("--prefix-len", type=int, help=f"tokens of the system prompt (default {PREFIX_LEN}; "
                   f"{MULTITURN_SYSTEM_LEN} with multiturn)")
    p.add_argument("--num-prompts", type=int, default=64, help="requests (multiturn: conversations), default 64")
    p.add_argument("--concurrency", type=int, default=32, help="requests (conversations) in flight, default 32")
    p.add_argument("--output-len", type=int, default=32, help="tokens generated per request, default 32")
    p.add_argument("--turns", type=int,
                   help=f"with --dataset multiturn: turns per conversation (default {DEFAULT_TURNS})")
    p.add_argument("--workers", type=int, default=2, help="genie-serve worker processes, default 2")
    p.add_argument("--kv-cache-mib", type=int, default=1024, help="KV cache per worker in MiB, default 1024")
    p.add_argument("--only", choices=[s.value for s in Setting], help="start only the server with caching off (or on)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the model's compute dtype (default auto: bfloat16 where fast)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each setting, alternating (off on, on off, ...); ratios use their means (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt text, default 0")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take, default 600")
    p.add_argument("--registry-home", type=Path, help="genie registry home (default $GENIE_HOME or ~/.genie)")
    p.add_argument("--output", type=Path, help="directory for the results JSON (default benchmarks/results/)")
    args = p.parse_args(argv)
    try:
        _check(args)
    except ValueError as err:
        p.error(str(err))
    return args


def _check(args: argparse.Namespace) -> None:
    """Fills in the dataset's defaults; raises ValueError naming the flag."""
    args.dataset = Workload(args.dataset)
    for flag in ("prefix_len", "num_prompts", "concurrency", "output_len", "turns", "workers", "kv_cache_mib", "repeat"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.turns is not None and args.dataset is not Workload.MULTITURN:
        raise ValueError("--turns only applies with --dataset multiturn")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    multiturn = args.dataset is Workload.MULTITURN
    args.prefix_len = args.prefix_len or (MULTITURN_SYSTEM_LEN if multiturn else PREFIX_LEN)
    args.turns = (args.turns or DEFAULT_TURNS) if multiturn else None
    args.settings = [Setting(args.only)] if args.only else [Setting.OFF, Setting.ON]
    args.output = args.output or default_output_dir()


def server_knows_prefix_caching() -> bool:
    """Whether this checkout's genie-serve has the `serving.prefix_caching` setting (it rejects unknown keys)."""
    from genie.config import ServingConfig

    return "prefix_caching" in ServingConfig.model_fields


def server_config(args: argparse.Namespace, setting: Setting, knows_key: bool) -> dict:
    """configs/llm.yaml on free ports; without the setting, the key is left out (such a server has no cache)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["serving"] |= {"http_port": 0, "grpc_port": None, "max_running_requests": max(64, args.concurrency),
                          "worker_timeout_s": max(30.0, args.timeout)}
    if knows_key:
        config["serving"]["prefix_caching"] = setting is Setting.ON
    config["workers"] |= {"launch": args.workers, "kv_cache_mib": args.kv_cache_mib}
    config["model"]["dtype"] = args.dtype
    if args.registry_home:
        config.setdefault("registry", {})["home"] = str(args.registry_home)
    return config


def serve_options(args: argparse.Namespace, url: str, setting: Setting) -> ServeOptions:
    return ServeOptions(
        url=url, model=yaml.safe_load(CONFIG.read_text())["model"]["name"], label=f"prefix_caching {setting}",
        endpoint=Endpoint.CHAT, mode=LoadMode.CONCURRENCY, levels=(float(args.concurrency),),
        num_prompts=args.num_prompts, output_len=args.output_len, input_len=None, prompts_file=None,
        ignore_eos=True, temperature=0.0, slo=Slo(), max_concurrency=None, seed=args.seed, timeout_s=args.timeout,
        output_dir=args.output, plot=False, progress=False, dataset=SERVE_DATASET[args.dataset],
        prefix_len=args.prefix_len, turns=args.turns,
    )


async def _warm_up(opts: ServeOptions) -> None:
    """One short request on unrelated text, untimed: one-time costs land in no row, and what it leaves in the
    cache is no prefix of the measured prompts (they all start with a system prompt of their own)."""
    warm = dataclasses.replace(opts, output_len=2)
    run = await run_level(warm, 1, synthetic_prompts(1, 16, seed=-1), asyncio.Event())
    if not run.records or not run.records[0].ok:
        raise RuntimeError(f"the warm-up request failed: {run.records[0].error if run.records else 'not sent'}")


@contextlib.asynccontextmanager
async def genie_server(args: argparse.Namespace, setting: Setting, knows_key: bool) -> AsyncIterator[str]:
    """genie-serve on a temporary config for `setting`, stopped (drained) on the way out; yields its base URL."""
    from genie.serving.process import spawn_server

    from .stateless_serve import stop_server

    with tempfile.TemporaryDirectory(prefix="genie-prefix-cache-") as tmp:
        path = Path(tmp) / "genie.yaml"
        path.write_text(yaml.safe_dump(server_config(args, setting, knows_key)))
        server = await asyncio.to_thread(spawn_server, path, START_TIMEOUT_S)
        try:
            yield server.url
        finally:
            await asyncio.to_thread(stop_server, server)


async def measure(args: argparse.Namespace, setting: Setting, items: list[Item], knows_key: bool) -> Measured:
    async with genie_server(args, setting, knows_key) as url:
        opts = serve_options(args, url, setting)
        await _warm_up(opts)
        run = await run_level(opts, float(args.concurrency), items, asyncio.Event())
    return Measured(setting, opts, run, summarize(run.records, run.duration_s, Slo(), run.prefix_cache))


def heading(args: argparse.Namespace) -> str:
    n, length = args.num_prompts, args.prefix_len
    what = {Workload.PREFIX: f"{n} questions after one shared system prompt of ~{length} tokens",
            Workload.DISTINCT: f"{n} requests, each with its own system prompt of ~{length} tokens",
            Workload.MULTITURN: f"{n} conversations of {args.turns} turns, system prompts of ~{length} tokens",
            }[args.dataset]
    here = machine()
    return (f"# {args.dataset}: {what}; concurrency {args.concurrency}; {args.output_len} output tokens (ignore_eos); "
            f"dtype {args.dtype}; "
            f"{args.workers} workers; {here['processor']}, {here['cpu_count']} cores")


def _ms(stats, field: str) -> str:
    return "-" if stats is None else f"{getattr(stats, field):,.1f}"


def table(rows: list[Measured]) -> str:
    lines = [f"{'prefix caching':<15} {'hit rate':>10} {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'ITL p99 ms':>10} "
             f"{'out tok/s':>9} {'req/s':>7} {'errors':>6}"]
    for m in rows:
        s = m.summary
        lines.append(f"{m.setting:<15} {hit_rate_text(s):>10} {_ms(s.ttft, 'p50_ms'):>11} {_ms(s.ttft, 'p99_ms'):>11} "
                     f"{_ms(s.itl, 'p99_ms'):>10} {s.output_throughput:>9.1f} {s.request_throughput:>7.2f} "
                     f"{s.errors:>6}")
    return "\n".join(lines)


def order(settings: list[Setting], repeat: int) -> list[Setting]:
    """Each setting `repeat` times, every other round reversed (off on on off ...), so a drift in the machine's
    speed during the run weighs on both settings alike."""
    rounds = []
    for i in range(repeat):
        rounds += settings if i % 2 == 0 else settings[::-1]
    return rounds


def ratios(rows: list[Measured]) -> dict[str, float | None]:
    """on / off for TTFT p50 and throughput, each the mean over the setting's runs; empty unless both ran."""
    by: dict[Setting, list[Summary]] = {}
    for m in rows:
        by.setdefault(m.setting, []).append(m.summary)
    if set(by) != {Setting.OFF, Setting.ON}:
        return {}

    def mean(setting: Setting, value: Callable[[Summary], float | None]) -> float | None:
        values = [value(s) for s in by[setting]]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def ratio(value: Callable[[Summary], float | None]) -> float | None:
        on, off = mean(Setting.ON, value), mean(Setting.OFF, value)
        return on / off if on is not None and off else None

    return {
        "ttft_p50_on_off": ratio(lambda s: s.ttft and s.ttft.p50_ms),
        "output_throughput_on_off": ratio(lambda s: s.output_throughput),
        "request_throughput_on_off": ratio(lambda s: s.request_throughput),
    }


def ratio_lines(found: dict[str, float | None], workload: Workload) -> list[str]:
    names = {"ttft_p50_on_off": "TTFT p50 on/off", "output_throughput_on_off": "output tok/s on/off",
             "request_throughput_on_off": "requests/s on/off"}
    lines = [f"{names[k]}: {'-' if v is None else f'{v:.3f}x'}" for k, v in found.items()]
    tput = found.get("output_throughput_on_off")
    if workload is Workload.DISTINCT and tput is not None:
        verdict = "met" if tput >= 0.98 else "NOT met"
        lines.append(f"caching costs <= 2 % at 0 % hits (output tok/s on/off >= 0.98): {verdict}")
    return lines


def same_outputs(rows: list[Measured]) -> tuple[int, int] | None:
    """(requests whose text is the same in every run, requests that succeeded in every run); greedy decoding with
    batch-invariant kernels must give the same text with the cache as without. None for a single run."""
    if len(rows) < 2:
        return None
    common = set.intersection(*(set(m.run.replies) for m in rows))
    same = sum(1 for pid in common if len({m.run.replies[pid] for m in rows}) == 1)
    return same, len(common)


def results_doc(args: argparse.Namespace, rows: list[Measured], found: dict, started: dt.datetime) -> dict:
    config = {k: (str(v) if isinstance(v, (Path, enum.Enum)) else v) for k, v in vars(args).items() if k != "settings"}
    return {
        "tool": "genie.benchmarks.prefix_cache", "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(), "config": config | {"model_config": str(CONFIG)},
        "rows": [{"setting": str(m.setting)} | level_json(m.opts, m.run, m.summary) for m in rows],
        "ratios": found,
    }


async def run(args: argparse.Namespace) -> int:
    knows_key = server_knows_prefix_caching()
    if not knows_key:
        if Setting.ON in args.settings:
            say("this genie-serve has no serving.prefix_caching setting yet, so caching cannot be turned on; "
                "run with --only off")
            return EXIT_FAILED
        say("note: this genie-serve has no serving.prefix_caching setting; it runs without a prefix cache")
    items = BUILD[args.dataset](args)
    started = dt.datetime.now().astimezone()
    rows: list[Measured] = []
    for setting in order(args.settings, args.repeat):
        say(f"prefix caching {setting}: starting genie-serve ({args.workers} workers)")
        try:
            rows.append(await measure(args, setting, items, knows_key))
        except Exception as err:  # a server that does not start or answer ends the run, with its reason
            first, *log = str(err).splitlines() or [type(err).__name__]
            say(f"prefix caching {setting}: {first}")
            if log:
                print("\n".join(log), file=sys.stderr)
            return EXIT_FAILED
    found = ratios(rows)
    lines = [heading(args), table(rows), *ratio_lines(found, args.dataset)]
    if (same := same_outputs(rows)) is not None:
        lines.append(f"same generated text in every run: {same[0]}/{same[1]} requests")
    print("\n".join(lines), flush=True)
    path = args.output / f"prefix-cache-{args.dataset}-{started.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, results_doc(args, rows, found, started) | {"same_outputs": same and list(same)})
    say(f"results: {path}")
    return 0 if all(m.summary.completed for m in rows) else EXIT_FAILED


def say(message: str) -> None:
    print(f"prefix_cache: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
