"""What `genie-bench compare` leaves behind: one printed table, the targets it checks, and the results JSON."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .compare_setup import MODEL_TITLE, Setup
from .report import machine
from .roofline import Roofline
from .rows import BLIND_KV, HF, SERVE, Row

FORMAT_VERSION = 1
BYTES_TARGET = 0.001  # genie-serve's worker-link bytes per token at most 0.1% of blind-kv's
SPEEDUP_TARGET = 10.0  # genie-serve at many streams at least 10x HF generate one by one
COMPUTE_TARGET = 0.60  # genie-serve at many streams at least 60% of the compute bound
BANDWIDTH_TARGET = 0.80  # genie-serve at one stream at least 80% of the bandwidth bound
CONTENDED_STALL = 0.3  # a row whose CPU stall share is above this ran while other work took the cores


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: float | None  # None: a row it needs is missing or failed
    target: str
    met: bool | None
    detail: str
    contended: bool = False  # a speed it compares was measured while other work competed for the CPUs


def _find(rows: list[Row], system: str, streams: int | None = None) -> Row | None:
    for row in rows:
        if row.system == system and row.ok and (streams is None or row.streams == streams):
            return row
    return None


def _bytes_check(rows: list[Row], streams: int) -> Check:
    serve, blind = _find(rows, SERVE, streams), _find(rows, BLIND_KV, streams)
    name = f"genie-serve worker-link bytes per token vs blind-kv at {streams} streams"
    if serve is None or blind is None or not blind.bytes_per_token:
        return Check(name, None, "<= 0.1%", None, "not measured: a row it needs failed or was not run")
    share = serve.bytes_per_token / blind.bytes_per_token
    detail = f"{serve.bytes_per_token:,.0f} B vs {blind.bytes_per_token:,.0f} B per token = {share:.5%}"
    return Check(name, share, "<= 0.1%", share <= BYTES_TARGET, detail)


def _speedup_check(rows: list[Row], system: str, streams: int, against_streams: int = 1) -> Check:
    """Against HF generate one by one (target 10x), or with `against_streams` > 1 against its static batches of
    that size (stated, no target)."""
    fast, hf = _find(rows, system, streams), _find(rows, HF, against_streams)
    how = "one by one" if against_streams == 1 else f"in static batches of {against_streams}"
    name = f"{system} at {streams} streams vs HF generate {how}"
    target = ">= 10x" if against_streams == 1 else "stated"
    if fast is None or hf is None:
        return Check(name, None, target, None, "not measured: a row it needs failed or was not run")
    speedup = fast.tokens_per_s / hf.tokens_per_s
    detail = f"{fast.tokens_per_s:,.1f} vs {hf.tokens_per_s:,.1f} tok/s = {speedup:.1f}x"
    stalls = [row.cpu_stall for row in (fast, hf) if row.cpu_stall is not None]
    contended = any(stall > CONTENDED_STALL for stall in stalls)
    if contended:
        shares = " and ".join(f"{stall:.0%}" for stall in stalls)
        detail += f"; UNRELIABLE: the two rows ran with {shares} CPU stall; rerun on a quiet machine"
    met = speedup >= SPEEDUP_TARGET if against_streams == 1 else None
    if met is None:
        detail += " (no target: the comparison is stated)"
    return Check(name, speedup, target, met, detail, contended)


def checks(rows: list[Row], streams: int, roofline: Roofline | None = None) -> list[Check]:
    return [_bytes_check(rows, streams), _bytes_check(rows, 1), _speedup_check(rows, SERVE, streams),
            _speedup_check(rows, SERVE, streams, against_streams=streams),
            _bound_check(rows, roofline, streams, "compute"), _bound_check(rows, roofline, 1, "bandwidth")]


def _bound_check(rows: list[Row], roofline: Roofline | None, streams: int, kind: str) -> Check:
    """genie-serve's tok/s over the roofline's bound of `kind` (compute: TFLOP/s over 2 FLOPs per weight per
    token; bandwidth: read bandwidth over the weight bytes of a step, times the streams), measured in this run."""
    target = COMPUTE_TARGET if kind == "compute" else BANDWIDTH_TARGET
    name = f"genie-serve at {streams} streams vs the {kind} bound"
    serve = _find(rows, SERVE, streams)
    if serve is None or roofline is None:
        return Check(name, None, f">= {target:.0%}", None, "not measured: a row it needs failed or was not run")
    bound = (roofline.compute_bound() if kind == "compute" else roofline.bandwidth_bound(streams))
    share = serve.tokens_per_s / bound
    detail = f"{serve.tokens_per_s:,.1f} vs {bound:,.1f} tok/s = {share:.1%}"
    stalls = {"the row": serve.cpu_stall, "the roofline": roofline.cpu_stall}
    busy = {what: stall for what, stall in stalls.items() if stall is not None and stall > CONTENDED_STALL}
    contended = bool(busy)
    if contended:  # a bound measured under load is too low, and the share then too high
        shares = " and ".join(f"{what} with {stall:.0%}" for what, stall in busy.items())
        detail += f"; UNRELIABLE: measured with CPU stall ({shares}); rerun on a quiet machine"
    return Check(name, share, f">= {target:.0%}", share >= target, detail, contended)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B"


COLUMNS = ("system", "setting", "prompts", "out tok", "tok/s", "TTFT p50 ms", "TPOT p50 ms", "link B/token",
           "% bound", "CPU stall")


def _cells(row: Row, roofline: Roofline | None) -> list[str]:
    fraction = None
    if roofline is not None and row.tokens_per_s is not None:
        fraction = 100 * row.tokens_per_s / roofline.decode_bound(row.streams)
    return [row.system, row.setting, str(row.prompts), f"{row.output_tokens:,}", _num(row.tokens_per_s),
            _num(row.ttft_p50_ms, 0), _num(row.tpot_p50_ms, 0), _bytes(row.bytes_per_token),
            "-" if fraction is None else f"{fraction:.1f}%", "-" if row.cpu_stall is None else f"{row.cpu_stall:.0%}"]


def _roofline_lines(roofline: Roofline | None, streams: int) -> list[str]:
    if roofline is None:
        return ["roofline: not measured"]
    weights_mb = roofline.weight_bytes_per_step / 1e6
    return [
        f"roofline: read bandwidth {roofline.read_gbps:,.1f} GB/s (copy {roofline.copy_gbps:,.1f} GB/s), "
        f"{roofline.dtype} matmul {roofline.tflops:,.2f} TFLOP/s; a decode step reads {weights_mb:,.0f} MB of weights"
        + ("" if roofline.cpu_stall is None else f"; CPU stall while measured {roofline.cpu_stall:.0%}"),
        f"  decode bound: {roofline.decode_bound(1):,.1f} tok/s at batch 1, "
        f"{roofline.decode_bound(streams):,.1f} tok/s at {streams} streams "
        "(% bound = tok/s over the bound at the row's streams)",
    ]


def table(setup: Setup, rows: list[Row], roofline: Roofline | None, found: list[Check]) -> str:
    opts = setup.opts
    prompts = f"synthetic ~{opts.input_len} tokens" if opts.input_len else "built-in set"
    lines = [
        f"genie-bench compare  {MODEL_TITLE}  {setup.dtype_name}  {opts.threads} threads  "
        f"output {opts.sizes.output_len} tokens{' (ignore_eos)' if opts.ignore_eos else ''}  prompts: {prompts}",
        *_roofline_lines(roofline, opts.sizes.streams),
    ]
    grid = [list(COLUMNS)] + [_cells(row, roofline) for row in rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(COLUMNS))]
    for cells in grid:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2])]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:])]
        lines.append("  ".join(left + right))
    lines.append("CPU stall: share of the row's time in which some task on this machine waited for a CPU "
                 "(/proc/pressure/cpu); high values mean other work competed with the row")
    for row in rows:
        if row.error:
            lines.append(f"{row.label}: {'failed' if not row.ok else f'{row.errors} requests failed'}: {row.error}")
    lines.append("checks:")
    for check in found:
        verdict = {True: "met", False: "NOT met", None: "not measured" if check.value is None else "measured"}[check.met]
        lines.append(f"  {check.name} (target {check.target}): {verdict}; {check.detail}")
    return "\n".join(lines)


def results_path(output_dir: Path, started: dt.datetime) -> Path:
    stem = f"compare-{started.strftime('%Y%m%d-%H%M%S')}"
    path, n = output_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = output_dir / f"{stem}-{n}.json"
    return path


def document(setup: Setup, rows: list[Row], roofline: Roofline | None, status: str,
             started: dt.datetime) -> dict[str, Any]:
    """`status`: "running" while systems remain, then "complete" or "interrupted"."""
    return {
        "tool": "genie-bench compare",
        "format_version": FORMAT_VERSION,
        "status": status,
        "started_at": started.isoformat(timespec="seconds"),
        "written_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "config": setup.opts.to_json(),
        "model": {"name": MODEL_TITLE, "dir": str(setup.model_dir), "dtype": setup.dtype_name,
                  "prompt_tokens": [len(ids) for ids in setup.work.token_ids]},
        "roofline": roofline.to_json() if roofline else None,
        "rows": [row.to_json() for row in rows],
        "checks": [asdict(check) for check in checks(rows, setup.opts.sizes.streams, roofline)],
    }
