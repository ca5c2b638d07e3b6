"""Fixtures the worker tests share: what a real genie-worker child logs, and one-thread SmolLM2 steps."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch


class Lines(logging.Handler):
    """Every line the worker writes, as this process logs it (genie.childproc)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def worker_log() -> Iterator[Lines]:
    """The lines of every genie-worker this module's tests start (their output is logged as genie.childproc)."""
    logger = logging.getLogger("genie.childproc")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """SmolLM2 steps on one thread: on a shared machine a second OpenMP thread stalls each step it waits for."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ops():
    """The native kernels built for this CPU; the test is skipped where they cannot be built (no compiler)."""
    from genie.errors import InvalidRequest
    from genie.workers.engine.native import native_ops

    try:
        return native_ops(torch.device("cpu"))
    except InvalidRequest as exc:
        pytest.skip(f"native kernels unavailable: {exc}")
