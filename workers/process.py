"""Starting a `genie-worker` subprocess and learning its address from its ready line."""

from __future__ import annotations

import os
import sys

from genie.childproc import ChildProcess, spawn

READY_PREFIX = "genie-worker ready on "


class WorkerProcess(ChildProcess):
    """A running worker subprocess; its log goes to this process's log and its last lines are kept."""

    @property
    def address(self) -> str:
        """"127.0.0.1:PORT", as the worker announced it."""
        return self.ready_line[len(READY_PREFIX) :].strip()

    def stderr_tail(self) -> str:
        return self.log_tail()

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
    """Starts `genie-worker` on 127.0.0.1 with a free port and waits for its ready line. The worker stops by
    itself if this process dies without stopping it.

    Raises Unavailable, with the tail of the worker's log, if it exits or is not ready within `timeout` s.
    """
    cmd = [sys.executable, "-m", "genie.workers.cli", "--listen", "127.0.0.1:0", "--device", device,
           "--parent-pid", str(os.getpid())]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    cmd += extra_args or []
    return spawn(cmd, "genie-worker", READY_PREFIX, timeout, env=env, cls=WorkerProcess)
