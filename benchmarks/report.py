"""What a run leaves behind: the results JSON (config, per-request records, summaries) and a printed table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .options import Dataset, ServeOptions
from .runner import LevelRun, level_name
from .summary import Summary

FORMAT_VERSION = 1


def machine() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def results_path(opts: ServeOptions, started: dt.datetime) -> Path:
    """A new file per run: serve-LABEL-YYYYmmdd-HHMMSS[-N].json, never one an earlier run wrote."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", opts.label).strip("_") or "server"
    stem = f"serve-{label}-{started.strftime('%Y%m%d-%H%M%S')}"
    path, n = opts.output_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = opts.output_dir / f"{stem}-{n}.json"
    return path


def _record_json(record: Any) -> dict[str, Any]:
    data = asdict(record)
    data["tpot_s"] = record.tpot_s
    return data


def level_json(opts: ServeOptions, run: LevelRun, summary: Summary) -> dict[str, Any]:
    return {
        "mode": str(opts.mode),
        "level": run.level,
        "interrupted": run.interrupted,
        "cancelled": run.cancelled,
        "summary": asdict(summary),
        "requests": [_record_json(r) for r in run.records],
    }


def document(opts: ServeOptions, levels: list[dict[str, Any]], status: str, started: dt.datetime) -> dict[str, Any]:
    """`status`: "running" while levels remain, then "complete", "interrupted" or "failed"."""
    return {
        "tool": "genie-bench serve",
        "format_version": FORMAT_VERSION,
        "status": status,
        "label": opts.label,
        "started_at": started.isoformat(timespec="seconds"),
        "written_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "config": opts.to_json(),
        "levels": levels,
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file, even after Ctrl-C."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def hit_rate_text(summary: Summary) -> str:
    """"n/a" when the server has no prefix-cache counters, "no lookups" when it looked nothing up (caching off)."""
    if summary.prefix_cache_hit_rate is not None:
        return f"{summary.prefix_cache_hit_rate:.1%}"
    return "no lookups" if summary.prefix_cache_query_tokens == 0 else "n/a"


def _stat_rows(name: str, pick: str) -> list[tuple[str, Any]]:
    def getter(field: str):
        return lambda s: _num(getattr(getattr(s, pick), field)) if getattr(s, pick) else "-"

    return [(f"{name} {field[:-3]} ms", getter(field)) for field in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")]


ROWS: list[tuple[str, Any]] = [
    ("requests ok", lambda s: f"{s.completed}/{s.requests}"),
    ("errors", lambda s: str(s.errors)),
    ("duration s", lambda s: _num(s.duration_s, 2)),
    ("request throughput req/s", lambda s: _num(s.request_throughput, 2)),
    ("output throughput tok/s", lambda s: _num(s.output_throughput)),
    ("total throughput tok/s", lambda s: _num(s.total_token_throughput)),
    ("goodput req/s", lambda s: _num(s.goodput, 2)),
    ("prefix cache hit rate", lambda s: hit_rate_text(s)),
    ("output tokens", lambda s: f"{s.output_tokens:,}" + ("" if s.output_tokens_exact else "*")),
    *_stat_rows("TTFT", "ttft"),
    *_stat_rows("TPOT", "tpot"),
    *_stat_rows("ITL", "itl"),
    *_stat_rows("E2E", "e2e"),
]


def describe_prompts(opts: ServeOptions) -> str:
    """What each level sends, in a few words: `prompts: ...` in the table's head."""
    if opts.dataset is Dataset.PREFIX:
        return f"one system prompt of ~{opts.prefix_len} tokens + a distinct question, {opts.num_prompts} per level"
    if opts.dataset is Dataset.MULTITURN:
        return (f"{opts.num_prompts} conversations of {opts.turns} turns per level (system prompt ~{opts.prefix_len} "
                "tokens each; every turn resends the history with the server's replies)")
    prompts = f"synthetic ~{opts.input_len} tokens" if opts.input_len else str(opts.prompts_file or "built-in set")
    return f"{prompts}, {opts.num_prompts} per level"


def table(opts: ServeOptions, runs: list[tuple[LevelRun, Summary]]) -> str:
    lines = [
        f"genie-bench serve  {opts.url}  model={opts.model}  endpoint={opts.endpoint}  label={opts.label}",
        f"prompts: {describe_prompts(opts)}; max_tokens={opts.output_len}"
        f"{' (ignore_eos)' if opts.ignore_eos else ''}; temperature={opts.temperature:g}",
    ]
    headers = [level_name(opts.mode, run.level) + (" (stopped)" if run.interrupted else "") for run, _ in runs]
    width = max(len(name) for name, _ in ROWS) + 2
    cols = [max(12, len(h) + 2) for h in headers]
    lines.append("".ljust(width) + "".join(h.rjust(c) for h, c in zip(headers, cols)))
    for name, cell in ROWS:
        lines.append(name.ljust(width) + "".join(cell(s).rjust(c) for (_, s), c in zip(runs, cols)))
    if any(not s.output_tokens_exact for _, s in runs):
        lines.append("* counted from stream chunks: the server sent no usage")
    if any(s.prefix_cache_hit_rate is not None for _, s in runs):
        lines.append("prefix cache hit rate: prompt tokens found cached / prompt tokens looked up, from GET /metrics")
    lines.extend(_slo_and_errors(opts, runs))
    return "\n".join(lines)


def _slo_and_errors(opts: ServeOptions, runs: list[tuple[LevelRun, Summary]]) -> list[str]:
    lines = []
    if not opts.slo.empty:
        limits = ", ".join(f"{k[:-3]} <= {v:g} ms" for k, v in asdict(opts.slo).items() if v is not None)
        lines.append(f"goodput counts completed requests with {limits}")
    for run, summary in runs:
        for err in summary.error_messages:
            lines.append(f"error at {level_name(opts.mode, run.level)} ({err.count}x): {err.message}")
    return lines

