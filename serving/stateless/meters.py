"""What serving measured per fragment: Infer calls, rows, the workers' compute seconds, the Infer calls as the
router saw them (request encoded, sent, answered and decoded), and the tensor bytes the router sent and got back. The executors record; `GET /v1/genie/plans` reads them beside the predictions."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

import torch

Tensors = dict[str, torch.Tensor]
SAMPLES = 256  # recent step times kept per batch size, for a median


def payload_bytes(tensors: Tensors) -> int:
    """Raw tensor bytes, without the protobuf framing the workers' own counters include."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(slots=True)
class FragmentMeter:
    fragment_id: str
    worker: str
    calls: int = 0
    rows: int = 0
    compute_s: float = 0.0  # summed InferResponse.compute_seconds: the forward on the worker, no transport
    sent_bytes: int = 0  # tensor payload sent to the fragment
    got_bytes: int = 0  # tensor payload it returned
    by_batch: dict[int, list[float]] = field(default_factory=dict)  # rows of a call -> [calls, compute seconds]
    recent: dict[int, deque[float]] = field(default_factory=dict)  # rows -> the last SAMPLES compute seconds
    call_s: float = 0.0  # summed Infer calls as the router timed them (0 where an executor does not time them)
    recent_calls: dict[int, deque[float]] = field(default_factory=dict)  # rows -> the last SAMPLES of those

    def record(self, rows: int, seconds: float, sent: Tensors, got: Tensors, call_s: float | None = None) -> None:
        if call_s is not None:
            self.call_s += call_s
            self.recent_calls.setdefault(rows, deque(maxlen=SAMPLES)).append(call_s)
        self.calls += 1
        self.rows += rows
        self.compute_s += seconds
        self.sent_bytes += payload_bytes(sent)
        self.got_bytes += payload_bytes(got)
        entry = self.by_batch.setdefault(rows, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        self.recent.setdefault(rows, deque(maxlen=SAMPLES)).append(seconds)

    def step_s(self, batch: int) -> float | None:
        """Mean compute seconds of a call of `batch` rows, None when no call had that many."""
        entry = self.by_batch.get(batch)
        return entry[1] / entry[0] if entry else None

    def fastest_step_s(self, batch: int) -> float | None:
        """The fastest recent call of `batch` rows: what the start-up probes (each their fastest run) predict."""
        samples = self.recent.get(batch)
        return min(samples) if samples else None

    def median_step_s(self, batch: int) -> float | None:
        """Median of the recent calls of `batch` rows: one call slowed by a busy machine does not move it."""
        samples = self.recent.get(batch)
        return statistics.median(samples) if samples else None

    def median_call_s(self, batch: int) -> float | None:
        """Median of the recent Infer calls of `batch` rows as the router timed them, transport included."""
        samples = self.recent_calls.get(batch)
        return statistics.median(samples) if samples else None

    def to_dict(self) -> dict:
        per_row = (lambda n: n / self.rows) if self.rows else (lambda n: None)
        return {
            "calls": self.calls, "rows": self.rows, "mean_batch": self.rows / self.calls if self.calls else None,
            "mean_step_s": self.compute_s / self.calls if self.calls else None,
            "mean_call_s": self.call_s / self.calls if self.calls and self.call_s else None,
            "sent_bytes_per_request": per_row(self.sent_bytes), "got_bytes_per_request": per_row(self.got_bytes),
            "step_s_by_batch": {str(b): s / c for b, (c, s) in sorted(self.by_batch.items())},
        }


class Meters(dict[str, FragmentMeter]):
    """fragment_id -> its meter, made on first use."""

    def of(self, fragment_id: str, worker: str) -> FragmentMeter:
        meter = self.get(fragment_id)
        if meter is None:
            meter = self[fragment_id] = FragmentMeter(fragment_id, worker)
        return meter
