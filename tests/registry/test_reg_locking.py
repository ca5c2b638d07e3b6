"""Opening a SQLite registry while another process holds the file's lock waits instead of failing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from genie.registry.database import make_engine
from genie.registry.store import Registry


def test_open_waits_for_a_lock_held_while_the_journal_mode_changes(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x INTEGER)")  # a file still in rollback-journal mode
    holder.execute("BEGIN IMMEDIATE")  # a racing process writing before the file is in WAL mode
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        engine = make_engine(f"sqlite:///{path}")
    finally:
        release.join()
        holder.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    assert Registry.open(f"sqlite:///{path}").list_models() == []
