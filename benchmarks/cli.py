"""`genie-bench`: serving benchmarks. `serve` measures any OpenAI-compatible server; `plot` draws saved runs;
`compare` measures genie-serve against its baselines (HF generate, the engine in-process, semantic-blind remote
execution, the machine's roofline) in one run.

Bad flags end with one line on stderr and exit status 2; nothing here prints a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

from .datasets import DEFAULT_TURNS, MULTITURN_SYSTEM_LEN, PREFIX_LEN
from .options import (
    Dataset,
    Endpoint,
    LoadMode,
    ServeOptions,
    Slo,
    default_label,
    parse_concurrency,
    parse_goodput,
    parse_rates,
    parse_url,
    positive_int,
)

EXIT_USAGE = 2
PACKAGE_RESULTS = Path(__file__).resolve().parent / "results"


def default_output_dir() -> Path:
    """benchmarks/results/ in a source checkout; ./genie-bench-results when installed elsewhere."""
    return PACKAGE_RESULTS if PACKAGE_RESULTS.is_dir() else Path.cwd() / "genie-bench-results"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _serve_parser(sub: argparse._SubParsersAction) -> Parser:
    p = sub.add_parser("serve", help="measure an OpenAI-compatible server", description=__doc__)
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000 (with or without /v1)")
    p.add_argument("--model", required=True, help="model name sent in every request")
    p.add_argument("--label", help="name of this system in tables and plots (default: host:port of --url)")
    p.add_argument("--endpoint", choices=[e.value for e in Endpoint], default="chat", help="API to call (default chat)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="requests in flight, one run per level, e.g. 1,8,32 (default 1,8,32)")
    load.add_argument("--request-rate", help="Poisson arrivals in requests/s, one run per rate, e.g. 2 or 1,4")
    p.add_argument("--max-concurrency", type=int, help="with --request-rate: cap on requests in flight")
    p.add_argument("--num-prompts", type=int, default=100,
                   help="requests per level (default 100); with --dataset multiturn, conversations per level")
    p.add_argument("--dataset", choices=[d.value for d in Dataset], default="default",
                   help="default: the built-in set (or --prompts / --input-len); prefix: one shared system prompt, "
                   "a distinct question per request; multiturn: conversations that resend their history")
    p.add_argument("--prefix-len", type=int, help=f"tokens of the system prompt: shared by every request with "
                   f"--dataset prefix (default {PREFIX_LEN}), one per conversation with multiturn "
                   f"(default {MULTITURN_SYSTEM_LEN})")
    p.add_argument("--turns", type=int, help=f"with --dataset multiturn: turns per conversation (default {DEFAULT_TURNS})")
    p.add_argument("--input-len", type=int, help="synthetic prompts of about this many tokens instead of the built-in set")
    p.add_argument("--prompts", type=Path, help="JSONL file of chat prompts instead of the built-in set")
    p.add_argument("--output-len", type=int, default=128, help="max_tokens per request (default 128)")
    p.add_argument("--ignore-eos", action="store_true", help="ask the server to generate exactly --output-len tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--goodput", help="SLOs for goodput in ms, e.g. ttft:500,tpot:50 (also e2e:MS)")
    p.add_argument("--seed", type=int, default=0, help="seed for prompt order and arrival times (default 0)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default 600)")
    p.add_argument("--output", type=Path, default=None, help="directory for results (default benchmarks/results/)")
    p.add_argument("--plot", action="store_true", help="also draw a PNG next to the results JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    return p


def _plot_parser(sub: argparse._SubParsersAction) -> Parser:
    p = sub.add_parser("plot", help="draw saved genie-bench serve results, one line per label")
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by genie-bench serve")
    p.add_argument("--out", type=Path, help="PNG to write (default: the first result's name with .png)")
    return p


def _compare_parser(sub: argparse._SubParsersAction) -> Parser:
    from .compare_options import add_arguments

    p = sub.add_parser("compare", help="genie-serve against its baselines, measured in one run",
                       description="genie-serve against HF generate, the engine in-process, the semantic-blind "
                       "modes and the machine's roofline, on SmolLM2 with the same prompts, in one run.")
    add_arguments(p)
    return p


def build_parser() -> Parser:
    parser = Parser(prog="genie-bench", description="Serving benchmarks with baselines measured in the same run.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,plot,compare}", parser_class=Parser)
    serve = _serve_parser(sub)
    serve.set_defaults(handler=_serve, parser=serve)
    plot = _plot_parser(sub)
    plot.set_defaults(handler=_plot, parser=plot)
    compare = _compare_parser(sub)
    compare.set_defaults(handler=_compare, parser=compare)
    return parser


def _output_dir(path: Path | None) -> Path:
    out = path or default_output_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--output: cannot create {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--output: {out} is not writable; pass a directory you can write to")
    return out


def _dataset(args: argparse.Namespace) -> tuple[Dataset, int | None, int | None]:
    """(dataset, prefix_len, turns) with the dataset's defaults filled in."""
    dataset = Dataset(args.dataset)
    if dataset is not Dataset.MULTITURN and args.turns is not None:
        raise ValueError("--turns only applies with --dataset multiturn")
    if dataset is Dataset.DEFAULT:
        if args.prefix_len is not None:
            raise ValueError("--prefix-len only applies with --dataset prefix or multiturn")
        return dataset, None, None
    for flag, value in (("--input-len", args.input_len), ("--prompts", args.prompts)):
        if value is not None:
            raise ValueError(f"--dataset {dataset} builds its own prompts; drop {flag} (or use --dataset default)")
    if dataset is Dataset.PREFIX:
        return dataset, args.prefix_len or PREFIX_LEN, None
    return dataset, args.prefix_len or MULTITURN_SYSTEM_LEN, args.turns or DEFAULT_TURNS


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """Check the flags together; raises ValueError naming the flag and what would be right."""
    for flag, value in (("--num-prompts", args.num_prompts), ("--output-len", args.output_len),
                        ("--input-len", args.input_len), ("--max-concurrency", args.max_concurrency),
                        ("--prefix-len", args.prefix_len), ("--turns", args.turns)):
        positive_int(flag, value)
    dataset, prefix_len, turns = _dataset(args)
    if args.max_concurrency is not None and args.request_rate is None:
        raise ValueError("--max-concurrency only applies with --request-rate; with --concurrency the level is the cap")
    if args.input_len is not None and args.prompts is not None:
        raise ValueError("--input-len (synthetic prompts) and --prompts FILE exclude each other; pick one")
    if not 0.0 <= args.temperature <= 2.0:
        raise ValueError(f"--temperature must be between 0 and 2, got {args.temperature:g}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'genie-serve[bench]'")
    url = parse_url(args.url)
    rate = args.request_rate is not None
    return ServeOptions(
        url=url,
        model=args.model,
        label=args.label or default_label(url),
        endpoint=Endpoint(args.endpoint),
        mode=LoadMode.RATE if rate else LoadMode.CONCURRENCY,
        levels=parse_rates(args.request_rate) if rate else parse_concurrency(args.concurrency or "1,8,32"),
        num_prompts=args.num_prompts,
        output_len=args.output_len,
        input_len=args.input_len,
        prompts_file=args.prompts,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
        slo=parse_goodput(args.goodput) if args.goodput else Slo(),
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        timeout_s=args.timeout,
        output_dir=_output_dir(args.output),
        plot=args.plot,
        progress=not args.no_progress,
        dataset=dataset,
        prefix_len=prefix_len,
        turns=turns,
        api_key=args.api_key,
    )


def _serve(parser: Parser, args: argparse.Namespace) -> int:
    import asyncio

    from .serve import load_prompts, run_serve

    try:
        opts = serve_options(args)
        prompts = load_prompts(opts)
    except ValueError as err:
        parser.error(str(err))
    return asyncio.run(run_serve(opts, prompts))


def _plot(parser: Parser, args: argparse.Namespace) -> int:
    from .plot import load_results, save_plot

    if importlib.util.find_spec("matplotlib") is None:
        parser.error("plotting needs matplotlib: pip install 'genie-serve[bench]'")
    try:
        docs = load_results(args.results)
        out = save_plot(docs, args.out or args.results[0].with_suffix(".png"))
    except ValueError as err:
        parser.error(str(err))
    except OSError as err:
        parser.error(f"--out: cannot write {err.filename}: {err.strerror}")
    print(f"genie-bench: plot: {out}", file=sys.stderr)
    return 0


def _compare(parser: Parser, args: argparse.Namespace) -> int:
    from .compare_options import compare_options

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'genie-serve[bench]'")
    try:
        opts = compare_options(args, _output_dir(args.output))
    except ValueError as err:
        parser.error(str(err))
    from .compare import main as compare_main

    return compare_main(opts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args.parser, args)
    except KeyboardInterrupt:
        print("genie-bench: stopped; levels that finished are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
