"""Lookups shared by the registry's operations; each takes an open Session and returns rows or records."""

from __future__ import annotations

import os
import socket

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from genie.errors import NotFound

from .artifacts import ArtifactStore
from .records import ArtifactRecord, VersionRecord
from .schema import AliasRow, AnalysisRow, ArtifactRow, ModelRow, PlanRow, ProfileRow, VersionRow


def model_row(s: Session, name: str) -> ModelRow:
    row = s.scalar(select(ModelRow).where(ModelRow.name == name))
    if row is None:
        raise NotFound(f"no model named {name!r} in the registry; see `genie-models list`")
    return row


def version_row(s: Session, model: ModelRow, selector: int | str | None) -> VersionRow:
    """The version a selector names: a number, an alias, or None for the newest."""
    query = select(VersionRow).where(VersionRow.model_id == model.id)
    if selector is None:
        row = s.scalar(query.order_by(VersionRow.number.desc()).limit(1))
        if row is None:
            raise NotFound(f"model {model.name!r} has no versions")
        return row
    if isinstance(selector, int):
        row = s.scalar(query.where(VersionRow.number == selector))
        if row is None:
            raise NotFound(f"{model.name} has no version {selector}; it has {_numbers(s, model)}")
        return row
    alias = s.scalar(select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == selector))
    if alias is None:
        raise NotFound(
            f"{model.name} has no alias {selector!r}; set one with `genie-models alias {model.name} VERSION {selector}`"
        )
    return s.get_one(VersionRow, alias.version_id)


def version_by(s: Session, model_id: int, **where) -> VersionRow | None:
    query = select(VersionRow).where(VersionRow.model_id == model_id)
    for column, value in where.items():
        query = query.where(getattr(VersionRow, column) == value)
    return s.scalar(query.order_by(VersionRow.number).limit(1))


def next_number(s: Session, model_id: int) -> int:
    top = s.scalar(select(func.max(VersionRow.number)).where(VersionRow.model_id == model_id))
    return (top or 0) + 1


def aliases_of(s: Session, version_id: int) -> tuple[str, ...]:
    return tuple(s.scalars(select(AliasRow.name).where(AliasRow.version_id == version_id).order_by(AliasRow.name)))


def artifacts_of(s: Session, version_id: int) -> tuple[ArtifactRecord, ...]:
    rows = s.scalars(select(ArtifactRow).where(ArtifactRow.version_id == version_id).order_by(ArtifactRow.path))
    return tuple(ArtifactRecord(r.path, r.sha256, r.bytes) for r in rows)


def to_record(
    s: Session, model: ModelRow, row: VersionRow, store: ArtifactStore, created: bool = False
) -> VersionRecord:
    return VersionRecord(
        name=model.name,
        version=row.number,
        source=row.source_uri,
        format=row.format,
        architecture=row.architecture,
        dtype=row.dtype,
        parameters=row.parameters,
        content_hash=row.content_hash,
        created_at=row.created_at,
        status=row.status,
        path=store.model_dir(row.content_hash),
        aliases=aliases_of(s, row.id),
        artifacts=artifacts_of(s, row.id),
        details=dict(row.details or {}),
        created=created,
    )


def add_analysis(s: Session, content_hash: str, analyzer: str, kind: str, fingerprint: str | None = None) -> None:
    """Counts one run of the semantic layer in the registry itself (see schema.AnalysisRow)."""
    s.add(AnalysisRow(content_hash=content_hash, analyzer_version=analyzer, kind=kind,
                      cluster_fingerprint=fingerprint, process=f"{socket.gethostname()}:{os.getpid()}"[:160]))


def analysis_counts(s: Session, content_hash: str, analyzer: str) -> dict[str, int]:
    """{kind: runs} for this content and analyser, across every process sharing the registry."""
    rows = s.execute(
        select(AnalysisRow.kind, func.count())
        .where(AnalysisRow.content_hash == content_hash, AnalysisRow.analyzer_version == analyzer)
        .group_by(AnalysisRow.kind)
    )
    return {"profile": 0, "plan": 0} | {kind: n for kind, n in rows}


def drop_orphan_profiles(s: Session) -> None:
    """Profiles (and their plans) of content no version has any more."""
    live = select(VersionRow.content_hash)
    orphans = list(s.scalars(select(ProfileRow.id).where(ProfileRow.content_hash.not_in(live))))
    if orphans:
        s.execute(PlanRow.__table__.delete().where(PlanRow.profile_id.in_(orphans)))
        s.execute(ProfileRow.__table__.delete().where(ProfileRow.id.in_(orphans)))


def _numbers(s: Session, model: ModelRow) -> str:
    numbers = list(
        s.scalars(select(VersionRow.number).where(VersionRow.model_id == model.id).order_by(VersionRow.number))
    )
    return "versions " + ", ".join(map(str, numbers)) if numbers else "no versions"
