"""The `genie-bench compare --plot` figure: tokens/s and worker-link bytes per token, one bar per row.

matplotlib is imported inside (slow to import, optional), and only its object API is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SYSTEM_COLORS = {"HF generate": "C7", "engine in-process": "C0", "genie-serve HTTP": "C2", "blind-kv": "C3",
                 "blind-recompute": "C1"}


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{row['system']}\n{row['setting']}" for row in rows]


def _throughput(ax: Any, rows: list[dict[str, Any]], roofline: dict[str, Any] | None) -> None:
    y = range(len(rows))
    values = [row["tokens_per_s"] or 0.0 for row in rows]
    ax.barh(y, values, color=[SYSTEM_COLORS.get(row["system"], "C9") for row in rows])
    for i, row in enumerate(rows):
        ax.text(values[i], i, f" {values[i]:,.1f}" if row["tokens_per_s"] else " failed", va="center", fontsize="small")
    if roofline:
        bound = roofline["decode_bound_batch1_tok_s"]
        ax.axvline(bound, color="k", linestyle="--", linewidth=1, label=f"batch-1 roofline {bound:,.0f} tok/s")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_yticks(list(y), _labels(rows), fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15 * max(values + [roofline["decode_bound_batch1_tok_s"] if roofline else 0.0, 1.0]))
    ax.set_xlabel("output tokens/s")
    ax.set_title("throughput")


def _bytes(ax: Any, rows: list[dict[str, Any]]) -> None:
    linked = [row for row in rows if row["bytes_per_token"]]
    y = range(len(linked))
    values = [row["bytes_per_token"] for row in linked]
    ax.barh(y, values, color=[SYSTEM_COLORS.get(row["system"], "C9") for row in linked])
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:,.0f} B", va="center", fontsize="small")
    ax.set_xscale("log")
    ax.set_xlim(right=max(values) * 30)  # room for the value labels on a log axis
    ax.set_yticks(list(y), _labels(linked), fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("worker-link bytes per generated token (log scale)")
    ax.set_title("worker-link traffic")


def save_plot(doc: dict[str, Any], out: Path) -> Path:
    from matplotlib.figure import Figure

    rows = doc["rows"]
    fig = Figure(figsize=(12, max(4.0, 0.45 * len(rows) + 1.5)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    _throughput(left, rows, doc.get("roofline"))
    if any(row["bytes_per_token"] for row in rows):
        _bytes(right, rows)
    else:
        right.set_axis_off()
    model = doc["model"]
    fig.suptitle(f"genie-bench compare: {model['name']}, {model['dtype']}, {doc['machine']['cpu_count']} CPUs, "
                 f"{doc['started_at']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    return out
