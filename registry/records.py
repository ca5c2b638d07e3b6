"""What the registry hands out: immutable records, never live database rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .names import human_count

if TYPE_CHECKING:
    from genie.semantic import ClusterSpec, Plan


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    path: str  # relative to the model folder
    sha256: str
    bytes: int


@dataclass(frozen=True, slots=True)
class VersionRecord:
    name: str
    version: int
    source: str
    format: str  # hf | gguf | py
    architecture: str
    dtype: str
    parameters: int
    content_hash: str
    created_at: datetime
    status: str  # ready | damaged
    path: Path  # the model folder: config.json, model.safetensors, tokenizer files (or the py: files)
    aliases: tuple[str, ...] = ()
    artifacts: tuple[ArtifactRecord, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    created: bool = False  # set by register(): False when an existing version was returned

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def total_bytes(self) -> int:
        return sum(a.bytes for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": list(self.aliases),
            "source": self.source,
            "format": self.format,
            "architecture": self.architecture,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "parameters_human": human_count(self.parameters),
            "content_hash": self.content_hash,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "path": str(self.path),
            "bytes": self.total_bytes,
            "artifacts": [{"path": a.path, "sha256": a.sha256, "bytes": a.bytes} for a in self.artifacts],
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class ModelSummary:
    name: str
    versions: tuple[int, ...]
    aliases: dict[str, int]  # alias -> version

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "aliases": self.aliases}


@dataclass(frozen=True, slots=True)
class PlanRecord:
    cluster_fingerprint: str
    cluster: ClusterSpec
    plan: Plan
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster_fingerprint": self.cluster_fingerprint,
            "created_at": self.created_at.isoformat(),
            "summary": self.plan.summary(),
            "cluster": self.cluster.to_dict(),
            "plan": self.plan.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Damage:
    path: str
    problem: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ref: str
    files: int
    bytes: int
    damage: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.ref,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "damage": [{"path": d.path, "problem": d.problem} for d in self.damage],
        }


@dataclass(slots=True)
class RegistryStats:
    """Counters of analysis work this Registry object did or avoided; a second start should compute none."""

    profiles_computed: int = 0
    profiles_loaded: int = 0
    plans_computed: int = 0
    plans_loaded: int = 0
    blobs_stored: int = 0
    conversions_skipped: int = 0  # GGUF sources already registered, recognised by their hash
