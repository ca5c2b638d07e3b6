"""The schema is versioned and upgraded on open; databases from a newer genie are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, update

import genie.registry.database as database
from genie.errors import ConfigError, Unavailable
from genie.registry.schema import SCHEMA_VERSION, SchemaInfo
from genie.registry.store import Registry


def test_fresh_database_gets_every_table_and_the_current_version(reg: Registry) -> None:
    tables = set(inspect(reg.engine).get_table_names())
    assert {"models", "versions", "aliases", "artifacts", "profiles", "plans", "schema_info"} <= tables
    with reg.engine.connect() as conn:
        assert database.schema_version(conn) == SCHEMA_VERSION


def test_opening_again_keeps_the_data(db_url: str, home: Path, llama_dir: Path) -> None:
    with Registry.open(db_url, home) as reg:
        reg.register("tiny", str(llama_dir), progress=False)
    with Registry.open(db_url, home) as reg:
        assert [m.name for m in reg.list_models()] == ["tiny"]


def test_an_older_schema_is_upgraded_on_open(db_url: str, home: Path, monkeypatch) -> None:
    Registry.open(db_url, home).close()
    ran: list[int] = []
    monkeypatch.setattr(database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(database.STEPS, SCHEMA_VERSION + 1, lambda conn: ran.append(SCHEMA_VERSION + 1))
    with Registry.open(db_url, home) as reg, reg.engine.connect() as conn:
        assert database.schema_version(conn) == SCHEMA_VERSION + 1
    Registry.open(db_url, home).close()  # already current: the step does not run twice
    assert ran == [SCHEMA_VERSION + 1]


def test_a_newer_schema_is_refused(db_url: str, home: Path) -> None:
    with Registry.open(db_url, home) as reg, reg.engine.begin() as conn:
        conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION + 5))
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 5}, newer than this genie"):
        Registry.open(db_url, home)


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://x@localhost/db", "genie supports sqlite:/// and postgresql://"), ("not a url", "is not a database URL")],
)
def test_unsupported_urls_are_refused(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        Registry.open(url, tmp_path)


def test_unreachable_postgres_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot open the registry database postgresql") as info:
        Registry.open("postgresql+psycopg2://genie:secret@127.0.0.1:1/none", tmp_path)
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_env_selects_home_and_url(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENIE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("GENIE_REGISTRY_URL", raising=False)
    with Registry.open() as reg:
        assert reg.home == tmp_path / "h"
        assert str(reg.engine.url) == f"sqlite:///{tmp_path / 'h' / 'registry.db'}"
    assert (tmp_path / "h" / "registry.db").is_file()
