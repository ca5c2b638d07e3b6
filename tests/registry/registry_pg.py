"""A throwaway PostgreSQL server on 127.0.0.1 for the registry tests, started with the machine's initdb/pg_ctl.

As root the server runs as the `postgres` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    user: str | None  # the OS user running the server, when we are root

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def find_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if not candidates and shutil.which("initdb"):
        candidates = [os.path.realpath(shutil.which("initdb"))]
    return Path(candidates[0]).parent if candidates else None


def start_server() -> PgServer:
    """Starts a server or raises RuntimeError saying why none can be had."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb is not installed (scripts/ensure-postgres.sh installs it)")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
        if not shutil.which("runuser"):
            raise RuntimeError("running as root and runuser is missing")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="genie-pg-"))
    if user:
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
    server = PgServer(bindir, root, _free_port(), user)
    try:
        server._run("initdb", "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {server.port} -k {root} -c fsync=off -c max_connections=100"
        server._run(
            "pg_ctl", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start"
        )
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.strip() or exc} {log[-500:]}") from None
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
