"""One row of the `genie-bench compare` table: a system at one load level, measured or failed."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .pressure import CpuStall
from .workload import Workload

HF = "HF generate"
ENGINE = "engine in-process"
SERVE = "genie-serve HTTP"
BLIND_KV = "blind-kv"
BLIND_RECOMPUTE = "blind-recompute"


def streams_setting(streams: int) -> str:
    return "1 stream" if streams == 1 else f"{streams} streams"


@dataclass(frozen=True, slots=True)
class Row:
    system: str
    setting: str  # "one by one", "static batch 32", "1 stream", "32 streams"
    streams: int  # requests computed together (batch size, or requests in flight)
    prompts: int
    output_tokens: int = 0
    duration_s: float = 0.0
    ttft_p50_ms: float | None = None
    tpot_p50_ms: float | None = None
    link_bytes_sent: int | None = None  # serialized Step requests toward the workers; None: no worker link
    link_bytes_received: int | None = None  # serialized Step responses from the workers
    errors: int = 0  # requests that failed (the row still counts those that finished)
    error: str | None = None  # why the row has no numbers, or the most frequent request error
    cpu_stall: float | None = None  # share of the row's time some task waited for a CPU (see pressure.py)

    @property
    def ok(self) -> bool:
        return self.output_tokens > 0

    @property
    def tokens_per_s(self) -> float | None:
        return self.output_tokens / self.duration_s if self.ok and self.duration_s > 0 else None

    @property
    def bytes_per_token(self) -> float | None:
        if not self.ok or self.link_bytes_sent is None or self.link_bytes_received is None:
            return None
        return (self.link_bytes_sent + self.link_bytes_received) / self.output_tokens

    @property
    def label(self) -> str:
        return f"{self.system}, {self.setting}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"tokens_per_s": self.tokens_per_s, "bytes_per_token": self.bytes_per_token}


@dataclass(frozen=True, slots=True)
class Level:
    """A row to be measured: a system at one load level over a workload."""

    system: str
    setting: str
    streams: int
    work: Workload

    @classmethod
    def streaming(cls, system: str, streams: int, work: Workload) -> Level:
        return cls(system, streams_setting(streams), streams, work)

    def failed(self, err: BaseException) -> Row:
        text = str(err).strip()
        message = text.splitlines()[0][:300] if text else "no details"
        return Row(self.system, self.setting, self.streams, len(self.work), error=f"{type(err).__name__}: {message}")


def fail_all(levels: Iterable[Level], err: BaseException, on_row: Callable[[Row], None]) -> None:
    for level in levels:
        on_row(level.failed(err))


async def measure_levels(
    levels: Iterable[Level], measure: Callable[[Level], Awaitable[Row]], on_row: Callable[[Row], None]
) -> None:
    """Measures each level in turn; a level that fails gets a failed row and the next one still runs."""
    for level in levels:
        stall = CpuStall()
        try:
            row = await measure(level)
        except Exception as err:
            row = level.failed(err)
        on_row(dataclasses.replace(row, cpu_stall=stall.share()))


def p50_ms(seconds: Iterable[float | None]) -> float | None:
    values = [s for s in seconds if s is not None]
    return statistics.median(values) * 1000 if values else None
