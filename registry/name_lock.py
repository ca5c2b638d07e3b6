"""One registration of a model name at a time, across every process that shares the registry.

Several genie-serve processes on one PostgreSQL registry (or on one SQLite file) that start together with
`register_if_missing` would each import and analyse the same model; the unique rows keep only one, but the
analysis would run in each. Holding this lock while registering makes the others wait, then find the version
the first one stored: the model is analysed once. PostgreSQL: a session advisory lock keyed by the name;
SQLite (one machine): an exclusive flock on a file beside the database file.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Registry


def _pg_key(name: str) -> int:
    """A signed 64-bit key (PostgreSQL's bigint) for this name, apart from the schema-upgrade lock's."""
    return int.from_bytes(hashlib.sha256(f"genie-register:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def registering(reg: Registry, name: str) -> Iterator[None]:
    """Waits until no other process registers `name`, and holds that until the block ends."""
    if reg.engine.dialect.name == "postgresql":
        # AUTOCOMMIT: the lock belongs to the session, and the connection never sits idle in a transaction.
        with reg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_pg_key(name)})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_pg_key(name)})")
        return
    with open(_lock_path(reg, name), "a+") as handle:  # names are [A-Za-z0-9._-]: safe file names
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def _lock_path(reg: Registry, name: str) -> Path:
    """Beside the SQLite file, so every registry home sharing that database shares the lock; in the home for
    an in-memory database."""
    database = reg.engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(f"{database}.register-{name}.lock")
    folder = reg.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"register-{name}.lock"
