"""One registration of a model name, and one analysis of a version's content, at a time, across every process
that shares the registry.

Several genie-serve processes on one PostgreSQL registry (or on one SQLite file) that start together with
`register_if_missing` would each import and analyse the same model; the unique rows keep only one, but the
analysis would run in each. Holding this lock while registering makes the others wait, then find the version
the first one stored: the model is analysed once. PostgreSQL: a session advisory lock keyed by the name;
SQLite (one machine): an exclusive flock on a file beside the database file. The same holds for computing a
profile or a plan outside registration (`analysing`): the first process computes, the others read its rows.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Registry


def _pg_key(key: str) -> int:
    """A signed 64-bit key (PostgreSQL's bigint) for this lock, apart from the schema-upgrade lock's."""
    return int.from_bytes(hashlib.sha256(f"genie-{key}".encode()).digest()[:8], "big", signed=True)


def registering(reg: Registry, name: str) -> AbstractContextManager[None]:
    """Waits until no other process registers `name`, and holds that until the block ends."""
    return _held(reg, f"register-{name}")  # names are [A-Za-z0-9._-]: safe file names


def analysing(reg: Registry, content_hash: str) -> AbstractContextManager[None]:
    """Waits until no other process analyses or plans this content, and holds that until the block ends.

    Apart from `registering`, which may be held around it by the same process (neither lock is re-entrant)."""
    return _held(reg, f"analyse-{content_hash[:32]}")


@contextmanager
def _held(reg: Registry, key: str) -> Iterator[None]:
    if reg.engine.dialect.name == "postgresql":
        # AUTOCOMMIT: the lock belongs to the session, and the connection never sits idle in a transaction.
        with reg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_pg_key(key)})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_pg_key(key)})")
        return
    with open(_lock_path(reg, key), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def _lock_path(reg: Registry, key: str) -> Path:
    """Beside the SQLite file, so every registry home sharing that database shares the lock; in the home for
    an in-memory database."""
    database = reg.engine.url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(f"{database}.{key}.lock")
    folder = reg.home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.lock"
