"""Child processes that announce readiness with one stdout line (`genie-worker`, `genie-serve`).

Their output pipes are drained on daemon threads so a chatty child never blocks, and the last lines of its
log are kept to explain a failure.

Each child runs in a session of its own: Ctrl-C at a terminal signals the foreground process group, and a
child in that group would stop before its parent has drained. Only the parent tells a child to stop
(`ChildProcess.stop`); a child that must not outlive its parent watches for it (`genie-worker --parent-pid`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, TypeVar

from genie.errors import Unavailable

log = logging.getLogger("genie.childproc")
TAIL_LINES = 40


class ChildProcess:
    """A started child; `ready_line` is the line that announced it was ready."""

    def __init__(self, popen: subprocess.Popen[str], name: str, ready_line: str, tail: collections.deque[str]) -> None:
        self._popen = popen
        self.name = name
        self.ready_line = ready_line
        self._tail = tail

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def log_tail(self) -> str:
        return "".join(self._tail)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after `grace` seconds; returns the exit code."""
        if self.alive():
            self._popen.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %.1f s; killing it", self.name, self.pid, grace)
                self._popen.kill()
        return self._popen.wait()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


C = TypeVar("C", bound=ChildProcess)


def spawn(
    cmd: list[str], name: str, ready_prefix: str, timeout: float, env: dict[str, str] | None = None,
    cwd: str | None = None, cls: type[C] = ChildProcess,  # type: ignore[assignment]
) -> C:
    """Starts `cmd` and waits for a stdout line starting with `ready_prefix`.

    Raises Unavailable with the tail of the child's log if it exits first or is not ready within `timeout`.
    """
    popen = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines: queue.Queue[str | None] = queue.Queue()
    pid = popen.pid

    def keep(line: str) -> None:
        tail.append(line)
        log.info("%s %d: %s", name, pid, line.rstrip())

    def on_stdout(line: str) -> None:
        keep(line)
        lines.put(line)

    _drain(popen.stdout, on_stdout, on_end=lambda: lines.put(None))
    stderr_reader = _drain(popen.stderr, keep)
    try:
        ready = _wait_ready(lines, ready_prefix, name, timeout)
    except Unavailable as exc:
        if popen.poll() is None:
            popen.kill()
        code = popen.wait()
        stderr_reader.join(timeout=2.0)  # the last lines it wrote explain why it failed
        raise Unavailable(f"{exc} (exit code {code}); its log ends with:\n{''.join(tail)}") from None
    return cls(popen, name, ready, tail)


def _drain(stream: IO[str], sink: Callable[[str], object], on_end: Callable[[], object] | None = None) -> threading.Thread:
    def run() -> None:
        for line in stream:
            sink(line)
        if on_end is not None:
            on_end()

    thread = threading.Thread(target=run, name="genie-child-pipe", daemon=True)
    thread.start()
    return thread


def _wait_ready(lines: queue.Queue[str | None], prefix: str, name: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise Unavailable(f"{name} exited before it was ready")
        if line.startswith(prefix):
            return line.rstrip("\n")
    raise Unavailable(f"{name} was not ready within {timeout:g} s and was killed")
