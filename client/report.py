"""Counters of the client path, reported by genie.client.report(): what was compiled, specialised, refused."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Report:
    graphs: int = 0  # FX graphs Dynamo handed to the genie backend (first compiles, recompiles, graph-break pieces)
    recompiles: int = 0  # of those, graphs Dynamo compiled again for a frame it had compiled (guards failed)
    programs: int = 0  # programs lowered: one per graph and distinct input shapes (shapes are specialised)
    respecializations: int = 0  # programs lowered for a graph that already had one (new shapes)
    remote_calls: int = 0  # graph calls that ran on a worker
    local_calls: int = 0  # graph calls that ran here because the worker refused the graph or it could not lower
    fallbacks: int = 0  # graphs that fell back to local execution
    kept_outputs: int = 0  # outputs left on the worker by handle (a decoder's KV cache), summed over calls
    lower_seconds: float = 0.0  # make_fx + serialisation, summed
    place_seconds: float = 0.0  # LoadProgram + BindWeights, summed


REPORT = Report()
_breaks_before = 0  # Dynamo's graph breaks are counted process-wide; the report gives those since reset()


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def report() -> dict[str, float | int]:
    """The counters so far, with Dynamo's graph breaks and the transport's traffic."""
    from .session import _current

    out: dict[str, float | int] = asdict(REPORT)
    out["graph_breaks"] = _graph_breaks() - _breaks_before
    if _current is not None:
        t = _current.transport
        out |= {"rpcs": t.rpcs, "bytes_sent": t.bytes_sent, "bytes_received": t.bytes_received}
    return out


def reset() -> None:
    global _breaks_before
    for name, value in asdict(Report()).items():
        setattr(REPORT, name, value)
    if "torch" in sys.modules:  # without torch imported, Dynamo has counted nothing yet
        _breaks_before = _graph_breaks()
