"""Progress of the slow steps of a registration (conversion, hashing, copying), on stderr.

A bar only when stderr is a terminal: a redrawn bar in a log file or a pipe is a line of carriage returns per
redraw. Anywhere else each step writes one plain line when it is done.
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager, contextmanager
from collections.abc import Iterator
from typing import Any, Protocol


class Progress(Protocol):
    """What the steps call on their bar: a tqdm bar on a terminal, a PlainProgress elsewhere."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix_str(self, text: str) -> object: ...


class PlainProgress:
    """Counts like a tqdm bar (update, set_postfix_str) and writes one line at the end, for logs."""

    def __init__(self, desc: str, unit: str, enabled: bool) -> None:
        self.desc, self.unit, self.enabled = desc, unit, enabled
        self.n = 0
        self._started = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass  # a step's name only matters while a bar is redrawn

    def finish(self) -> None:
        if self.enabled:
            done = _bytes(self.n) if self.unit == "B" else f"{self.n} {self.unit}s"
            print(f"{self.desc}: {done} in {time.perf_counter() - self._started:.1f} s", file=sys.stderr, flush=True)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _bar(desc: str, total: int, unit: str, enabled: bool, **tqdm_options: Any) -> Iterator[Progress]:
    if enabled and on_terminal():
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, **tqdm_options) as bar:
            yield bar
        return
    plain = PlainProgress(desc, unit, enabled)
    yield plain
    plain.finish()


def byte_bar(desc: str, total: int, enabled: bool) -> AbstractContextManager[Progress]:
    """A bar counting bytes; a disabled one still accepts update() so callers need no branches."""
    return _bar(desc, total, "B", enabled, unit_scale=True, unit_divisor=1024)


def step_bar(desc: str, steps: int, enabled: bool) -> AbstractContextManager[Progress]:
    """A bar over named steps; call bar.set_postfix_str(step) then bar.update() per step."""
    return _bar(desc, steps, "step", enabled)
