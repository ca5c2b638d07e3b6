"""Opening the registry database: SQLite by default, PostgreSQL for a shared registry; schema upgrades.

SQLite runs in WAL mode with a busy timeout, and write transactions start with BEGIN IMMEDIATE so two
processes never deadlock upgrading a read lock. Upgrades run on open, serialised by that lock on SQLite
and by an advisory lock on PostgreSQL, so the first of several racing processes does them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from genie.errors import ConfigError, Unavailable

from .schema import SCHEMA_VERSION, AnalysisRow, Base, SchemaInfo

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 60_000
_PG_MIGRATION_LOCK = 0x6E1E  # any constant shared by all genie processes


def _add_analyses(conn: Connection) -> None:
    AnalysisRow.__table__.create(conn, checkfirst=True)


# Upgrade steps: STEPS[n] takes a schema at version n - 1 to version n. A fresh database gets the current
# tables from the metadata in one go, so step 1 is never run.
STEPS: dict[int, Callable[[Connection], None]] = {2: _add_analyses}


def make_engine(url: str) -> Engine:
    """An engine for `url` (sqlite:///PATH or postgresql://...), with the schema at SCHEMA_VERSION."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"registry URL {url!r} is not a database URL; use sqlite:///PATH or postgresql://..."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"registry URL {url!r} uses {backend}; genie supports sqlite:/// and postgresql://")
    if backend == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        try:
            engine = create_engine(parsed, pool_pre_ping=True)
        except NoSuchModuleError as exc:
            raise ConfigError(f"cannot use {url!r}: {exc}; install psycopg2-binary for PostgreSQL") from None
    try:
        upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        where = parsed.render_as_string(hide_password=True)
        raise Unavailable(f"cannot open the registry database {where}: {_first_line(exc.orig)}") from None
    return engine


def _sqlite_engine(url) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below issues BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(cur)
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("genie_write") else "BEGIN")

    return engine


def _enable_wal(cur) -> None:
    """Switches the file to WAL, waiting for other processes doing the same.

    SQLite answers "database is locked" at once, without its busy handler, when two connections change the
    journal mode of a new file together, so this retries until the busy timeout runs out."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    backoff = 0.002
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(backoff)  # wait for the other connection's lock to go, then try again
            backoff = min(backoff * 2, 0.05)


def writer(engine: Engine) -> Engine:
    """The same engine, marked so that its transactions take SQLite's write lock up front."""
    return engine.execution_options(genie_write=True)


def schema_version(conn: Connection) -> int:
    if not inspect(conn).has_table(SchemaInfo.__tablename__):
        return 0
    return conn.execute(select(SchemaInfo.version).where(SchemaInfo.id == 1)).scalar_one_or_none() or 0


def upgrade(engine: Engine) -> None:
    """Brings the schema to SCHEMA_VERSION; refuses a database written by a newer genie."""
    with engine.connect() as conn:
        if schema_version(conn) == SCHEMA_VERSION:
            return
    with writer(engine).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"the registry database has schema version {current}, newer than this genie understands "
                f"({SCHEMA_VERSION}); upgrade genie-serve"
            )
        if current == 0:
            Base.metadata.create_all(conn)
            conn.execute(SchemaInfo.__table__.insert().values(id=1, version=SCHEMA_VERSION))
            log.info("created registry schema version %d", SCHEMA_VERSION)
            return
        for target in range(current + 1, SCHEMA_VERSION + 1):
            STEPS[target](conn)
            log.info("upgraded registry schema to version %d", target)
        conn.execute(SchemaInfo.__table__.update().where(SchemaInfo.id == 1).values(version=SCHEMA_VERSION))


def _first_line(exc: object) -> str:
    return (str(exc).strip().splitlines() or ["unknown error"])[0]
