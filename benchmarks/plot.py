"""Plots of `genie-bench serve` results: latency percentiles and throughput against load, one line per label.

matplotlib is imported inside the functions (it is slow to import and an optional dependency), and only the
object API is used, so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PERCENTILES = (("p50_ms", "-", "p50"), ("p90_ms", "--", "p90"), ("p99_ms", ":", "p99"))
X_LABELS = {"concurrency": "concurrency (requests in flight)", "rate": "request rate (requests/s)"}


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    model: str
    mode: str
    x: tuple[float, ...]
    summaries: tuple[dict[str, Any], ...]

    def values(self, *keys: str) -> list[float]:
        """summary[k1][k2]... per level, NaN where missing (e.g. a level where every request failed)."""
        out = []
        for summary in self.summaries:
            value: Any = summary
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            out.append(math.nan if value is None else float(value))
        return out


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror}") from None
        except json.JSONDecodeError:
            raise ValueError(f"{path} is not JSON; pass files that genie-bench serve wrote") from None
        if not isinstance(doc, dict) or doc.get("tool") != "genie-bench serve" or not doc.get("levels"):
            raise ValueError(f"{path} holds no genie-bench serve levels; pass files that genie-bench serve wrote")
        docs.append(doc)
    return docs


def series_of(docs: list[dict[str, Any]]) -> list[Series]:
    modes = {level["mode"] for doc in docs for level in doc["levels"]}
    if len(modes) > 1:
        raise ValueError("cannot draw concurrency sweeps and request-rate runs on one axis; plot them separately")
    series, seen = [], {}
    for doc in docs:
        label = doc.get("label") or doc["config"]["url"]
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} ({seen[label]})"
        levels = sorted(doc["levels"], key=lambda level: level["level"])
        series.append(
            Series(label, doc["config"]["model"], levels[0]["mode"], tuple(level["level"] for level in levels),
                   tuple(level["summary"] for level in levels))
        )
    return series


def _x_axis(ax: Axes, series: list[Series]) -> None:
    xs = sorted({x for s in series for x in s.x})
    ax.set_xlabel(X_LABELS[series[0].mode])
    if xs[-1] / xs[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.grid(True, alpha=0.3)


def _percentile_panel(ax: Axes, series: list[Series], colors: list[str], metric: str, title: str) -> None:
    for s, color in zip(series, colors):
        for key, style, _ in PERCENTILES:
            ax.plot(s.x, s.values(metric, key), style, color=color, marker="o", markersize=3)
    ax.set_title(title)
    ax.set_ylabel(f"{metric.upper()} (ms)")


def _throughput_panel(ax: Axes, series: list[Series], colors: list[str]) -> None:
    for s, color in zip(series, colors):
        ax.plot(s.x, s.values("output_throughput"), "-", color=color, marker="o", label=s.label)
    ax.set_title("output token throughput")
    ax.set_ylabel("output tokens/s")
    ax.legend(fontsize="small")


def _request_panel(ax: Axes, series: list[Series], colors: list[str]) -> None:
    for s, color in zip(series, colors):
        ax.plot(s.x, s.values("request_throughput"), "-", color=color, marker="o", label=f"{s.label} completed")
        goodput = s.values("goodput")
        if not all(math.isnan(g) for g in goodput):
            ax.plot(s.x, goodput, "--", color=color, marker="x", label=f"{s.label} goodput")
    ax.set_title("request throughput")
    ax.set_ylabel("requests/s")
    ax.legend(fontsize="small")


def build_figure(docs: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    series = series_of(docs)
    colors = [f"C{i % 10}" for i in range(len(series))]
    fig = Figure(figsize=(11, 8), layout="constrained")
    (ttft, tpot), (tokens, requests) = fig.subplots(2, 2)
    _percentile_panel(ttft, series, colors, "ttft", "time to first token")
    _percentile_panel(tpot, series, colors, "tpot", "time per output token")
    _throughput_panel(tokens, series, colors)
    _request_panel(requests, series, colors)
    for ax in (ttft, tpot, tokens, requests):
        _x_axis(ax, series)
        ax.set_ylim(bottom=0)  # from zero, so that small differences do not look large
    keys = [Line2D([], [], color=c, label=s.label) for s, c in zip(series, colors)]
    keys += [Line2D([], [], color="gray", linestyle=style, label=name) for _, style, name in PERCENTILES]
    ttft.legend(handles=keys, fontsize="small")
    models = ", ".join(sorted({s.model for s in series}))
    fig.suptitle(f"genie-bench serve: {models}")
    return fig


def save_plot(docs: list[dict[str, Any]], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    build_figure(docs).savefig(out, format="png", dpi=110)
    return out
