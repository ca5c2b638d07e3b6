"""The registry counts analysis work itself (the analyses table), so "analysed once" holds across processes:
two processes planning one version for one cluster at once plan it once, and an older registry gains the
table on open."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import inspect, update

from genie.config import parse_config
from genie.registry import database
from genie.registry.cluster import cluster_from_config
from genie.registry.schema import SCHEMA_VERSION, AnalysisRow, SchemaInfo
from genie.registry.store import Registry


def _cluster():
    cfg = parse_config({"model": {"name": "tiny"}, "workers": {"launch": 2, "device": "cpu", "memory_mib": 1024}})
    return cluster_from_config(cfg)


def test_two_processes_planning_one_version_at_once_plan_it_once(db_url: str, home: Path, llama_dir: Path) -> None:
    with Registry.open(db_url, home) as setup:
        record = setup.register("tiny", str(llama_dir), progress=False)
        assert setup.analysis_counts(record) == {"profile": 1, "plan": 0}
    first, second = Registry.open(db_url, home), Registry.open(db_url, home)
    go = threading.Barrier(2)
    plans = {}

    def plan(reg: Registry, who: str) -> None:
        go.wait()
        plans[who] = reg.get_or_make_plan(record, _cluster())

    try:
        threads = [threading.Thread(target=plan, args=(r, w)) for r, w in ((first, "a"), (second, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert plans["a"].to_dict() == plans["b"].to_dict()
        assert first.stats.plans_computed + second.stats.plans_computed == 1
        assert first.stats.plans_loaded + second.stats.plans_loaded == 1
        assert first.analysis_counts(record) == {"profile": 1, "plan": 1}
    finally:
        first.close()
        second.close()


def test_a_version_1_registry_gains_the_analyses_table_on_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = database.make_engine(url)
    with database.writer(engine).begin() as conn:  # as genie left it before the analyses table existed
        AnalysisRow.__table__.drop(conn)
        conn.execute(update(SchemaInfo).values(version=1))
    engine.dispose()
    engine = database.make_engine(url)
    with engine.connect() as conn:
        assert database.schema_version(conn) == SCHEMA_VERSION == 2
        assert inspect(conn).has_table("analyses")
    engine.dispose()
