"""The Ray actor of one worker (`workers.launcher: ray`): it runs a `genie-worker` process on its node.

This module is what Ray imports in every actor process, so it imports nothing heavy: the genie-worker it starts
imports torch, the actor itself never does.
"""

from __future__ import annotations

import logging
import os

from genie.workers.process import WorkerProcess, spawn_worker

log = logging.getLogger("genie.ray")


class WorkerActor:
    """One `genie-worker` child on this node; `address` starts a new one if it died under a live actor.

    `token` is the link credential the worker accepts; it reaches the child through its environment only."""

    def __init__(self, device: str, threads: int, timeout: float, token: str, artifact_roots: list[str],
                 loopback: bool, worker_flags: list[str] | None = None) -> None:
        """worker_flags: more genie-worker flags (the program limits of workers.programs)."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._args = (device, threads, timeout, token, artifact_roots, loopback, list(worker_flags or []))
        self._proc: WorkerProcess = self._spawn()

    def _spawn(self) -> WorkerProcess:
        import ray

        device, threads, timeout, token, roots, loopback, flags = self._args
        host = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
        # A later --listen overrides spawn_worker's own 127.0.0.1:0.
        return spawn_worker(device, threads, None, timeout, extra_args=["--listen", f"{host}:0", *flags],
                            token=token, artifact_roots=roots)

    def address(self) -> str:
        if not self._proc.alive():
            log.warning("genie-worker (pid %d) exited with %s; starting a new one", self._proc.pid,
                        self._proc.returncode)
            self._proc = self._spawn()
        return self._proc.address

    def pids(self) -> tuple[int, int]:
        """(this actor's process, its genie-worker's)."""
        return os.getpid(), self._proc.pid

    def stop(self, grace: float) -> int:
        return self._proc.stop(grace)
