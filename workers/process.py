"""Starting a `genie-worker` subprocess and learning its address from its ready line."""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

from genie.errors import Unavailable

log = logging.getLogger("genie.workers.process")

READY_PREFIX = "genie-worker ready on "
STDERR_TAIL_LINES = 40


class WorkerProcess:
    """A running worker subprocess.

    Its stderr (the worker's log) goes to this process's log, and its last lines are kept for error reports.
    """

    def __init__(self, popen: subprocess.Popen[str], address: str, stderr_tail: collections.deque[str]) -> None:
        self._popen = popen
        self.address = address  # "127.0.0.1:PORT"
        self._stderr_tail = stderr_tail

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `grace` seconds; returns the exit code."""
        if self.alive():
            self._popen.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %.1f s; killing it", self.pid, grace)
                self._popen.kill()
        return self._popen.wait()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"WorkerProcess(pid={self.pid}, address={self.address!r}, {state})"


def spawn_worker(
    device: str = "cpu",
    threads: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    extra_args: list[str] | None = None,
) -> WorkerProcess:
    """Starts `genie-worker` on 127.0.0.1 with a free port and waits for its ready line.

    Raises Unavailable, with the tail of the worker's log, if it exits or is not ready within `timeout` s.
    """
    cmd = [sys.executable, "-m", "genie.workers.cli", "--listen", "127.0.0.1:0", "--device", device]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    cmd += extra_args or []
    popen = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    _drain(popen.stdout, lines.put, on_end=lambda: lines.put(None))
    pid = popen.pid

    def keep_log_line(line: str) -> None:
        tail.append(line)
        log.info("worker %d: %s", pid, line.rstrip())

    stderr_reader = _drain(popen.stderr, keep_log_line)
    try:
        address = _wait_ready(lines, timeout)
    except Unavailable as exc:
        if popen.poll() is None:
            popen.kill()
        code = popen.wait()
        stderr_reader.join(timeout=2.0)  # the last lines the worker wrote explain why it failed
        raise Unavailable(f"{exc} (exit code {code}); its log ends with:\n{''.join(tail)}") from None
    except BaseException:  # interrupted while waiting: leave no orphan behind
        popen.kill()
        popen.wait()
        raise
    log.info("worker %d ready on %s", popen.pid, address)
    return WorkerProcess(popen, address, tail)


def _drain(
    stream: IO[str], sink: Callable[[str], object], on_end: Callable[[], object] | None = None
) -> threading.Thread:
    """Reads a pipe to its end on a daemon thread so the worker never blocks on a full pipe."""

    def run() -> None:
        for line in stream:
            sink(line)
        if on_end is not None:
            on_end()

    thread = threading.Thread(target=run, name="genie-worker-pipe", daemon=True)
    thread.start()
    return thread


def _wait_ready(lines: queue.Queue[str | None], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise Unavailable("genie-worker exited before it was ready")
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip()
    raise Unavailable(f"genie-worker was not ready within {timeout:g} s and was killed")
