"""Starting a `genie-worker` subprocess and learning its address from its ready line.

The link token travels in the child's environment only: argv is readable by every local user.
"""

from __future__ import annotations

import os
import sys

from genie.auth import LINK_TOKEN_ENV, new_link_token
from genie.childproc import ChildProcess, spawn

READY_PREFIX = "genie-worker ready on "


class WorkerProcess(ChildProcess):
    """A running worker subprocess; its log goes to this process's log and its last lines are kept.

    `token` is its link credential: pass it to `WorkerClient(proc.address, token=proc.token)`."""

    token: str = ""

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
    token: str | None = None,
    artifact_roots: list[str] | None = None,
) -> WorkerProcess:
    """Starts `genie-worker` on 127.0.0.1 with a free port and waits for its ready line. The worker stops by
    itself if this process dies without stopping it.

    It accepts calls carrying `token` (a fresh random one when None; see WorkerProcess.token), and loads model
    folders only from inside `artifact_roots` when given.

    Raises Unavailable, with the tail of the worker's log, if it exits or is not ready within `timeout` s.
    """
    cmd = [sys.executable, "-m", "genie.workers.cli", "--listen", "127.0.0.1:0", "--device", device,
           "--parent-pid", str(os.getpid())]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    for root in artifact_roots or []:
        cmd += ["--artifact-root", root]
    cmd += extra_args or []
    token = token or new_link_token()
    proc = spawn(cmd, "genie-worker", READY_PREFIX, timeout, env={**(env or {}), LINK_TOKEN_ENV: token},
                 cls=WorkerProcess)
    proc.token = token
    return proc
