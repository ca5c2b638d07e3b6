"""The registry's SQL tables (SQLAlchemy 2, portable between SQLite and PostgreSQL).

Uniqueness lives in the database, not in Python checks, so that two `genie-models register` processes
racing on one registry end with one row: the loser's insert fails and it reads the winner's row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Bump with a new step in database.STEPS whenever a table changes.
SCHEMA_VERSION = 2  # 2: the analyses table

HASH = String(64)  # sha256 hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, int: Integer}


class SchemaInfo(Base):
    __tablename__ = "schema_info"

    id: Mapped[int] = mapped_column(primary_key=True)  # always 1
    version: Mapped[int]


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_version_number"),
        UniqueConstraint("model_id", "content_hash", name="uq_version_content"),
        Index("ix_version_source", "model_id", "source_sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int]
    source_uri: Mapped[str] = mapped_column(Text)
    # sha256 of the source file (GGUF) when there is one: a repeat registration skips the conversion.
    source_sha256: Mapped[str | None] = mapped_column(HASH)
    format: Mapped[str] = mapped_column(String(16))  # hf | gguf | py
    architecture: Mapped[str] = mapped_column(String(128))
    dtype: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[int] = mapped_column(BigInteger)
    # sha256 over the sorted (path, sha256) manifest of the version's files; keys its profile.
    content_hash: Mapped[str] = mapped_column(HASH)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # importer facts, e.g. the py: factory
    status: Mapped[str] = mapped_column(String(16), default="ready")  # ready | damaged
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_alias_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))


class ArtifactRow(Base):
    """One file of a version's model folder; its bytes live in the artifact store under `sha256`."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("version_id", "path", name="uq_artifact_path"),
        Index("ix_artifact_sha", "sha256"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))  # relative to the model folder, e.g. model.safetensors
    sha256: Mapped[str] = mapped_column(HASH)
    bytes: Mapped[int] = mapped_column(BigInteger)


class ProfileRow(Base):
    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("content_hash", "analyzer_version", name="uq_profile_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(HASH)
    analyzer_version: Mapped[str] = mapped_column(String(64))
    workload_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]  # Profile.to_dict()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PlanRow(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("profile_id", "cluster_fingerprint", name="uq_plan_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"))
    cluster_fingerprint: Mapped[str] = mapped_column(HASH)
    cluster: Mapped[dict[str, Any]]  # ClusterSpec.to_dict()
    strategy: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]  # Plan.to_dict()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnalysisRow(Base):
    """One run of the semantic layer (a profile or a plan computed), by whichever process sharing the registry
    ran it: the registry's own count of analysis work, so "analysed once" can be read across processes."""

    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analysis_content", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(HASH)  # of the version analysed
    analyzer_version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # profile | plan
    cluster_fingerprint: Mapped[str | None] = mapped_column(HASH)  # plans: the cluster planned for
    process: Mapped[str] = mapped_column(String(160))  # host:pid of the process that ran it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
