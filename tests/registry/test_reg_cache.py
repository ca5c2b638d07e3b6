"""Analyse once: a second start with the same model and cluster reads profile and plan and computes nothing.

The real analyser and planner run throughout; `planner_calls` only counts the calls into the planner.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from registry_helpers import row_counts
from sqlalchemy import update

import genie.semantic as sem
from genie.config import parse_config
from genie.registry.analysis import analyzer_version
from genie.registry.cluster import cluster_from_config
from genie.registry.schema import ProfileRow
from genie.registry.store import Registry


def _cluster(launch: int = 2) -> sem.ClusterSpec:
    cfg = parse_config({"model": {"name": "tiny"}, "workers": {"launch": launch, "device": "cpu", "memory_mib": 4096}})
    return cluster_from_config(cfg)


@pytest.fixture
def planner_calls(monkeypatch) -> list[str]:
    """Counts calls into the real genie.semantic.plan (by cluster fingerprint)."""
    calls: list[str] = []
    real = sem.plan

    def counted(profile: sem.Profile, cluster: sem.ClusterSpec) -> sem.Plan:
        calls.append(cluster.fingerprint())
        return real(profile, cluster)

    monkeypatch.setattr(sem, "plan", counted)
    return calls


def test_second_start_reads_profile_and_plan_and_computes_nothing(
    db_url: str, home: Path, llama_dir: Path, planner_calls: list[str], caplog
) -> None:
    with Registry.open(db_url, home) as first:
        record = first.register("tiny", str(llama_dir), progress=False)
        plan = first.get_or_make_plan(record, _cluster())
        assert (first.stats.profiles_computed, first.stats.plans_computed) == (1, 1)
    caplog.set_level(logging.INFO, logger="genie.registry")
    with Registry.open(db_url, home) as second:
        again = second.get_or_make_plan(second.resolve("tiny"), _cluster())
        assert (second.stats.profiles_computed, second.stats.plans_computed) == (0, 0)
        assert (second.stats.profiles_loaded, second.stats.plans_loaded) == (1, 1)
    assert again.to_dict() == plan.to_dict()
    assert len(planner_calls) == 1
    assert "plan of tiny:1 for cluster" in caplog.text and "read from the registry" in caplog.text


def test_another_cluster_gets_its_own_cached_plan(reg: Registry, llama_dir: Path, planner_calls: list[str]) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    two, three = reg.get_or_make_plan(record, _cluster(2)), reg.get_or_make_plan(record, _cluster(3))
    assert (len(two.fragments), len(three.fragments)) == (2, 3)
    reg.get_or_make_plan(record, _cluster(3))
    assert reg.stats.plans_computed == 2 and reg.stats.plans_loaded == 1
    assert sorted(p.cluster_fingerprint for p in reg.plans(record)) == sorted(
        [_cluster(2).fingerprint(), _cluster(3).fingerprint()]
    )


def test_same_content_under_another_name_reuses_the_profile(reg: Registry, llama_dir: Path) -> None:
    reg.register("tiny", str(llama_dir), progress=False)
    reg.register("tiny-copy", str(llama_dir), progress=False)
    assert reg.stats.profiles_computed == 1
    assert row_counts(reg)["profiles"] == 1


def test_analyze_recomputes_and_drops_plans_of_the_old_profile(reg: Registry, llama_dir: Path, planner_calls) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    reg.get_or_make_plan(record, _cluster())
    reg.analyze(record)
    assert reg.stats.profiles_computed == 2
    assert reg.plans(record) == []
    reg.get_or_make_plan(record, _cluster())
    assert reg.stats.plans_computed == 2


def test_a_cached_profile_that_no_longer_decodes_is_recomputed(reg: Registry, llama_dir: Path, caplog) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    with reg.write() as s:
        s.execute(update(ProfileRow).values(data={"name": "tiny", "unexpected": 1}))
    profile = reg.get_profile(record)
    assert profile.name == "tiny"
    assert reg.stats.profiles_computed == 2
    assert "ignoring the cached profile" in caplog.text


def test_profile_is_keyed_by_content_and_analyser_version(reg: Registry, llama_dir: Path) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    with reg.session() as s:
        row = s.query(ProfileRow).one()
    assert (row.content_hash, row.analyzer_version) == (record.content_hash, analyzer_version())
    profile = reg.get_profile(record)
    assert profile.to_dict() == row.data
    assert profile.workload_type == "llm" and profile.llm.num_layers == 2


def test_py_model_profile_can_be_recomputed_from_the_store(reg: Registry, factories_on_path: str) -> None:
    record = reg.register("recsys", f"py:{factories_on_path}:tiny_recsys", progress=False)
    first = reg.get_profile(record)
    again = reg.analyze(record)  # the factory rebuilt on the meta device, fed the stored example inputs
    assert again.workload_type == first.workload_type
    assert [(p.name, p.count) for p in again.patterns] == [(p.name, p.count) for p in first.patterns]
    assert (again.cost.flops, again.cost.param_bytes) == (first.cost.flops, first.cost.param_bytes)


def test_ensure_registers_a_missing_model_once(reg: Registry, llama_dir: Path) -> None:
    cfg = parse_config({"model": {"name": "tiny", "source": str(llama_dir), "register_if_missing": True}})
    first = reg.ensure(cfg.model, progress=False)
    second = reg.ensure(cfg.model, progress=False)
    assert (first.created, second.version) == (True, first.version)
    assert row_counts(reg)["versions"] == 1
