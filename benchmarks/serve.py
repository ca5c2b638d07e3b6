"""`genie-bench serve`: probe the server, run each load level, save after every level, print and plot.

Exit status: 0 when every level completed some requests, 1 when the server is unreachable or a level had no
successful request, 130 when stopped by Ctrl-C (or SIGTERM). Results are saved in every case where
something ran.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
from pathlib import Path

from .datasets import DEFAULT_TURNS, MULTITURN_SYSTEM_LEN, PREFIX_LEN, conversations, prefix_prompts
from .options import Dataset, ServeOptions
from .plot import save_plot
from .probe import Unreachable, probe
from .prompts import builtin_prompts, file_prompts, sample, synthetic_prompts
from .report import document, level_json, results_path, table, write_json
from .runner import Item, LevelRun, run_level
from .summary import Summary, summarize

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def say(message: str) -> None:
    print(f"genie-bench: {message}", file=sys.stderr, flush=True)


def load_prompts(opts: ServeOptions, level: int = 0) -> list[Item]:
    """What level number `level` sends: prompts, or conversations with --dataset multiturn. Raises ValueError
    (a bad --prompts file) with a message for the user.

    The prefix and multiturn sets are built afresh for each level (seed + level), so that a level's cache hits
    come from its own requests, not from what an earlier level left in the server's cache."""
    seed = opts.seed + level
    if opts.dataset is Dataset.PREFIX:
        return list(prefix_prompts(opts.num_prompts, opts.prefix_len or PREFIX_LEN, seed))
    if opts.dataset is Dataset.MULTITURN:
        return list(conversations(opts.num_prompts, opts.turns or DEFAULT_TURNS,
                                  opts.prefix_len or MULTITURN_SYSTEM_LEN, seed))
    if opts.input_len is not None:
        return synthetic_prompts(opts.num_prompts, opts.input_len, opts.seed)
    pool = file_prompts(opts.prompts_file) if opts.prompts_file else builtin_prompts()
    return sample(pool, opts.num_prompts, opts.seed)


def _install_interrupt(interrupt: asyncio.Event) -> None:
    """The first Ctrl-C stops the run and saves; a second one falls through to KeyboardInterrupt."""
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        say(f"{signal.Signals(signum).name}: stopping; results so far are being saved (Ctrl-C again to quit now)")
        interrupt.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)


def _status(runs: list[tuple[LevelRun, Summary]], finished: bool) -> str:
    if any(run.interrupted for run, _ in runs):
        return "interrupted"
    if any(summary.completed == 0 for _, summary in runs):
        return "failed"
    return "complete" if finished else "running"


def _exit_code(status: str) -> int:
    return {"interrupted": EXIT_INTERRUPTED, "failed": EXIT_FAILED}.get(status, EXIT_OK)


def _plot(doc: dict, path: Path) -> None:
    if not any(level["summary"]["completed"] for level in doc["levels"]):
        say("no request completed, so there is nothing to plot")
        return
    say(f"plot: {save_plot([doc], path.with_suffix('.png'))}")


async def run_serve(opts: ServeOptions, prompts: list[Item]) -> int:
    interrupt = asyncio.Event()
    _install_interrupt(interrupt)
    try:
        found = await probe(opts.url, opts.model, {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {})
    except Unreachable as err:
        say(str(err))
        return EXIT_FAILED
    if found.warning:
        say(f"warning: {found.warning}")
    if interrupt.is_set():
        say("stopped before any request was sent; nothing saved")
        return EXIT_INTERRUPTED
    started = dt.datetime.now().astimezone()
    path = results_path(opts, started)
    runs: list[tuple[LevelRun, Summary]] = []
    levels: list[dict] = []
    for index, level in enumerate(opts.levels):
        items = prompts if index == 0 or opts.dataset is Dataset.DEFAULT else load_prompts(opts, index)
        run = await run_level(opts, level, items, interrupt)
        summary = summarize(run.records, run.duration_s, opts.slo, run.prefix_cache)
        runs.append((run, summary))
        levels.append(level_json(opts, run, summary))
        doc = document(opts, levels, _status(runs, len(runs) == len(opts.levels)), started)
        write_json(path, doc)
        if run.interrupted:
            break
    print(table(opts, runs), flush=True)
    say(f"results: {path}")
    if opts.plot:
        _plot(doc, path)
    status = doc["status"]
    if status == "failed":
        say("every request failed at some load level; see the errors above")
    return _exit_code(status)
