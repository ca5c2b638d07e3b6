"""`genie-bench compare`: genie-serve against its baselines, on one model, one dtype, one set of prompts, in
one process tree and one run.

Systems, in the order they run (each alone on the machine, so none slows another):
  hf      HF transformers `generate`: one request at a time, and static batches with left padding
  engine  our engine in-process, without the router: our continuous loop at 1 and N streams
  serve   genie-serve through HTTP (the `genie-bench serve` runner) at 1 and N streams
  blind   the semantic-blind modes on the same worker process type: blind-kv (the KV travels with every
          step) and blind-recompute (no KV kept: the whole context re-runs every step)
plus the machine's roofline (read and copy bandwidth, matmul TFLOP/s) measured first.

Exit status: 0 when every row has numbers, 1 when a system failed (its row says why; the run goes on),
130 when stopped by Ctrl-C. The results JSON is rewritten after every row, so a stopped run keeps its rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable

import torch

from . import roofline as roofline_mod
from .compare_options import CompareOptions
from .compare_plot import save_plot
from .compare_report import checks, document, results_path, table
from .compare_setup import Setup, prepare
from .report import write_json
from .rows import Row
from .systems_local import engine_rows, hf_rows
from .systems_remote import blind_rows, serve_rows

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130

Runner = Callable[[Setup, Callable[[Row], None]], Awaitable[None]]


RUNNERS: dict[str, Runner] = {"hf": hf_rows, "engine": engine_rows, "serve": serve_rows, "blind": blind_rows}


def say(message: str) -> None:
    print(f"genie-bench: {message}", file=sys.stderr, flush=True)


def _progress(row: Row) -> str:
    if not row.ok:
        return f"{row.label}: failed: {row.error}"
    extra = f", {row.bytes_per_token:,.0f} B/token on the worker links" if row.bytes_per_token is not None else ""
    return f"{row.label}: {row.output_tokens} tokens in {row.duration_s:.1f} s = {row.tokens_per_s:,.1f} tok/s{extra}"


def _measure_roofline(setup: Setup) -> roofline_mod.Roofline | None:
    try:
        return roofline_mod.measure(setup.model_dir, setup.dtype)
    except Exception as err:  # the table says "not measured"; the systems still run
        say(f"roofline: could not measure: {type(err).__name__}: {err}")
        return None


async def run_compare(opts: CompareOptions) -> int:
    torch.set_num_threads(opts.threads)
    say("preparing: SmolLM2 from the registry, prompts through its chat template")
    try:
        setup = prepare(opts)
    except Exception as err:
        say(f"cannot prepare the run: {type(err).__name__}: {err}")
        return EXIT_FAILED
    started = dt.datetime.now().astimezone()
    path = results_path(opts.output_dir, started)
    say(f"{len(setup.work)} prompts ({setup.work.prompt_tokens:,} prompt tokens), {setup.dtype_name}, "
        f"{opts.threads} threads; measuring the roofline")
    roofline = _measure_roofline(setup)
    rows: list[Row] = []

    def on_row(row: Row) -> None:
        rows.append(row)
        say(_progress(row))
        write_json(path, document(setup, rows, roofline, "running", started))

    status = "interrupted"
    try:
        for name in opts.systems:
            say(f"running {name}")
            await RUNNERS[name](setup, on_row)
        status = "complete"
    finally:
        doc = document(setup, rows, roofline, status, started)
        write_json(path, doc)
        if status == "interrupted":
            say(f"stopped; the rows that finished are in {path}")
    print(table(setup, rows, roofline, checks(rows, opts.sizes.streams, roofline)), flush=True)
    say(f"results: {path}")
    if opts.plot:
        say(f"plot: {save_plot(doc, path.with_suffix('.png'))}")
    return EXIT_OK if all(row.ok for row in rows) else EXIT_FAILED


def main(opts: CompareOptions) -> int:
    try:
        return asyncio.run(run_compare(opts))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
