"""Progress bars for the slow steps of a registration (conversion, hashing, copying), on stderr."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from collections.abc import Iterator

from tqdm import tqdm


@contextmanager
def byte_bar(desc: str, total: int, enabled: bool) -> Iterator[tqdm]:
    """A bar counting bytes; a disabled bar still accepts update() so callers need no branches."""
    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        yield bar


@contextmanager
def step_bar(desc: str, steps: int, enabled: bool) -> Iterator[tqdm]:
    """A bar over named steps; call bar.set_postfix_str(step) then bar.update() per step."""
    with tqdm(total=steps, desc=desc, unit="step", disable=not enabled, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar
