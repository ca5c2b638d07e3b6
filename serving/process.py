"""Starting `genie-serve` as a child process (benchmarks, tests) and reading its URL from the ready line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from genie.childproc import ChildProcess, spawn
from genie.errors import Unavailable

READY_PREFIX = "genie-serve ready"
_URL = re.compile(r" at (https?://\S+?)/v1 ")
_GRPC = re.compile(r", gRPC on (\S+?);")


class ServerProcess(ChildProcess):
    @property
    def url(self) -> str:
        match = _URL.search(self.ready_line)
        if match is None:
            raise Unavailable(f"cannot find the URL in genie-serve's ready line: {self.ready_line!r}")
        return match.group(1)

    @property
    def grpc_address(self) -> str | None:
        """host:port of the gRPC door, or None when the config serves no gRPC."""
        match = _GRPC.search(self.ready_line)
        return match.group(1) if match else None


def spawn_server(config: str | Path, timeout: float = 300.0, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> ServerProcess:
    cmd = [sys.executable, "-m", "genie.serving.cli", "--config", str(config), *(extra_args or [])]
    return spawn(cmd, "genie-serve", READY_PREFIX, timeout, env=env, cls=ServerProcess)
