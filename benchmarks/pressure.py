"""How much a row had to share the CPUs: Linux pressure stall information (/proc/pressure/cpu).

`some` counts the time in which at least one runnable task on the machine waited for a CPU. A row whose
share is high ran while other work competed for the cores (other jobs, or the row's own extra processes),
so its speed says less about the system measured.
"""

from __future__ import annotations

import time
from pathlib import Path

PSI_CPU = Path("/proc/pressure/cpu")


def _stall_us() -> int | None:
    """Cumulative microseconds of `some` CPU stall since boot; None where the kernel does not report it."""
    try:
        first = PSI_CPU.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in first.split()[1:] if "=" in part)
    try:
        return int(fields["total"])
    except (KeyError, ValueError):
        return None


class CpuStall:
    """Started at construction; `share()` is the stalled fraction of the wall time since then."""

    def __init__(self) -> None:
        self._stall = _stall_us()
        self._start = time.perf_counter()

    def share(self) -> float | None:
        now, elapsed = _stall_us(), time.perf_counter() - self._start
        if self._stall is None or now is None or elapsed <= 0:
            return None
        return min(1.0, (now - self._stall) / 1e6 / elapsed)
