"""The Registry: models, versions and aliases in SQL, their files in the artifact store.

reg = Registry.from_config(cfg.registry)
version = reg.resolve("smollm2", "prod")         # VersionRecord; version.path is the model folder
plan = reg.get_or_make_plan(version, cluster)    # computed once per (profile, cluster fingerprint)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from genie.errors import InvalidRequest, NotFound
from genie.home import registry_home, registry_url

from . import queries
from .artifacts import ArtifactStore
from .database import make_engine, writer
from .names import check_alias, check_name, selector_from
from .records import Damage, ModelSummary, PlanRecord, RegistryStats, VerifyReport, VersionRecord
from .schema import AliasRow, ArtifactRow, ModelRow, VersionRow

if TYPE_CHECKING:
    from genie.config import ModelConfig, RegistryConfig
    from genie.semantic import ClusterSpec, Plan, Profile

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, engine: Engine, home: Path) -> None:
        self.engine = engine
        self.home = home
        self.store = ArtifactStore(home)
        self.stats = RegistryStats()
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(writer(engine), expire_on_commit=False)

    @classmethod
    def open(cls, url: str | None = None, home: str | Path | None = None) -> Registry:
        """Opens (and creates or upgrades) the registry; None means $GENIE_REGISTRY_URL / $GENIE_HOME defaults."""
        home_text = str(home) if home is not None else None
        return cls(make_engine(registry_url(url, home_text)), registry_home(home_text))

    @classmethod
    def from_config(cls, cfg: RegistryConfig) -> Registry:
        return cls.open(cfg.url, cfg.home)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._read() as s:
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction, committed on exit (on SQLite it holds the write lock from the start)."""
        with self._write.begin() as s:
            yield s

    def register(
        self, name: str, source: str, version: int | str | None = None, alias: str | None = None, progress: bool = True,
        quantization: str = "none",
    ) -> VersionRecord:
        """Imports `source` as a new version of `name`; the same content again returns the existing version.
        `quantization` "int8" also stores the version's int8 artifact (quantized.py), on an existing one too."""
        from .register import register

        record = register(self, name, source, version=version, alias=alias, progress=progress)
        return self.add_int8(record) if quantization == "int8" else record

    def ensure(self, model: ModelConfig, progress: bool = True) -> VersionRecord:
        """The version a config's model section names, registered first when it asks for that; with
        `quantization: int8`, with its int8 artifact, computed and stored here on first need."""
        record = self._ensure(model, progress)
        return self.add_int8(record) if getattr(model.quantization, "value", None) == "int8" else record

    def add_int8(self, version: VersionRecord) -> VersionRecord:
        """The version with its int8 artifact (quant/int8-v1.safetensors), computed and stored unless it has one."""
        from .quantized import add_int8

        return add_int8(self, version)

    def _ensure(self, model: ModelConfig, progress: bool) -> VersionRecord:
        try:
            return self.resolve(model.name, model.version)
        except NotFound:
            if not model.register_if_missing or not self._missing(model.name):
                raise
        log.info("model %s is not registered yet; registering it from %s", model.name, model.source)
        record = self.register(model.name, model.source, progress=progress)
        return self.resolve(model.name, model.version) if model.version else record

    def resolve(self, name: str, version_or_alias: int | str | None = None) -> VersionRecord:
        """The version (newest when None) with its model folder built on disk."""
        check_name(name)
        selector = selector_from(version_or_alias)
        with self.session() as s:
            model = queries.model_row(s, name)
            record = queries.to_record(s, model, queries.version_row(s, model, selector), self.store)
        self.store.materialise(record.content_hash, {a.path: a.sha256 for a in record.artifacts})
        return record

    def versions(self, name: str) -> list[VersionRecord]:
        check_name(name)
        with self.session() as s:
            model = queries.model_row(s, name)
            rows = s.scalars(select(VersionRow).where(VersionRow.model_id == model.id).order_by(VersionRow.number))
            return [queries.to_record(s, model, row, self.store) for row in rows]

    def list_models(self) -> list[ModelSummary]:
        with self.session() as s:
            out = []
            for model in s.scalars(select(ModelRow).order_by(ModelRow.name)):
                numbers = tuple(
                    s.scalars(
                        select(VersionRow.number).where(VersionRow.model_id == model.id).order_by(VersionRow.number)
                    )
                )
                aliases = s.execute(
                    select(AliasRow.name, VersionRow.number)
                    .join(VersionRow, AliasRow.version_id == VersionRow.id)
                    .where(AliasRow.model_id == model.id)
                    .order_by(AliasRow.name)
                )
                out.append(ModelSummary(model.name, numbers, {a: n for a, n in aliases}))
            return out

    def set_alias(self, name: str, version: int | str, alias: str) -> VersionRecord:
        """Points `alias` at a version of `name`, moving it if it pointed elsewhere."""
        check_name(name)
        check_alias(alias)
        with self.write() as s:
            model = queries.model_row(s, name)
            row = queries.version_row(s, model, selector_from(version))
            set_alias_row(s, model.id, alias, row.id)
        return self.resolve(name, row.number)

    def delete(self, name: str, version: int | None = None, force: bool = False) -> list[VersionRecord]:
        """Deletes one version, or the whole model when `version` is None; refuses while aliases point at it."""
        check_name(name)
        with self.write() as s:
            model = queries.model_row(s, name)
            rows = (
                [queries.version_row(s, model, version)]
                if version is not None
                else list(s.scalars(select(VersionRow).where(VersionRow.model_id == model.id)))
            )
            doomed = [queries.to_record(s, model, row, self.store) for row in rows]
            held = [f"{a}->{r.version}" for r in doomed for a in r.aliases]
            if held and not force:
                raise InvalidRequest(
                    f"{name} has aliases pointing at what you asked to delete ({', '.join(held)}); move them with "
                    "`genie-models alias` or pass --force to delete them too"
                )
            ids = [row.id for row in rows]
            s.execute(AliasRow.__table__.delete().where(AliasRow.version_id.in_(ids)))
            s.execute(ArtifactRow.__table__.delete().where(ArtifactRow.version_id.in_(ids)))
            s.execute(VersionRow.__table__.delete().where(VersionRow.id.in_(ids)))
            if version is None or queries.version_by(s, model.id) is None:
                s.delete(model)  # a model without versions is gone too
            queries.drop_orphan_profiles(s)
        self.collect_garbage({a.sha256 for r in doomed for a in r.artifacts}, {r.content_hash for r in doomed})
        return doomed

    def collect_garbage(self, shas: set[str], content_hashes: set[str]) -> None:
        """Removes blobs and model folders among those given that no version refers to any more."""
        with self.session() as s:
            used = set(s.scalars(select(ArtifactRow.sha256).where(ArtifactRow.sha256.in_(shas))))
            live = set(s.scalars(select(VersionRow.content_hash).where(VersionRow.content_hash.in_(content_hashes))))
        for content_hash in content_hashes - live:
            self.store.remove_model_dir(content_hash)
        self.store.remove_blobs(shas - used)

    def verify(self, name: str, version: int | str | None = None) -> list[VerifyReport]:
        """Re-hashes the files of one version (or all versions) and marks damaged ones."""
        records = [self.resolve_quiet(name, version)] if version is not None else self.versions(name)
        reports = []
        for record in records:
            damage = []
            for a in record.artifacts:
                problem = self.store.damage(a.sha256, a.bytes) or self.store.model_file_damage(
                    record.content_hash, a.path, a.sha256
                )
                if problem:
                    damage.append(Damage(a.path, problem))
            reports.append(VerifyReport(record.ref, len(record.artifacts), record.total_bytes, tuple(damage)))
            self._set_status(record, "damaged" if damage else "ready")
        return reports

    def resolve_quiet(self, name: str, version_or_alias: int | str | None) -> VersionRecord:
        """Like resolve, without building the model folder (verify must see what is on disk)."""
        with self.session() as s:
            model = queries.model_row(s, check_name(name))
            return queries.to_record(
                s, model, queries.version_row(s, model, selector_from(version_or_alias)), self.store
            )

    # The analysis methods import the semantic layer (torch, transformers) on first use, so that
    # `genie-models list` and friends start in a fraction of a second.
    def get_profile(self, version: VersionRecord) -> Profile:
        from . import cache

        return cache.get_profile(self, version)

    def analyze(self, version: VersionRecord) -> Profile:
        """Recomputes the version's profile (and drops plans made from the old one)."""
        from . import cache

        return cache.analyse(self, version)

    def get_or_make_plan(self, version: VersionRecord, cluster: ClusterSpec) -> Plan:
        from . import cache

        return cache.get_or_make_plan(self, version, cluster)

    def plans(self, version: VersionRecord) -> list[PlanRecord]:
        from . import cache

        return cache.plans_of(self, version)

    def note_analysis(self, content_hash: str, kind: str, fingerprint: str | None = None) -> None:
        """Records that this process just computed a profile or a plan (see analysis_counts)."""
        from .analysis import analyzer_version

        with self.write() as s:
            queries.add_analysis(s, content_hash, analyzer_version(), kind, fingerprint)

    def analysis_counts(self, version: VersionRecord) -> dict[str, int]:
        """How often any process sharing this registry computed the version's profile and plans (current
        analyser): {"profile": n, "plan": m}. Analyse-once means profile 1, and one plan per cluster."""
        from .analysis import analyzer_version

        with self.session() as s:
            return queries.analysis_counts(s, version.content_hash, analyzer_version())

    def _missing(self, name: str) -> bool:
        with self.session() as s:
            return s.scalar(select(ModelRow.id).where(ModelRow.name == name)) is None

    def _set_status(self, record: VersionRecord, status: str) -> None:
        if record.status == status:
            return
        with self.write() as s:
            s.execute(
                VersionRow.__table__.update()
                .where(VersionRow.content_hash == record.content_hash)
                .values(status=status)
            )


def set_alias_row(s: Session, model_id: int, alias: str, version_id: int) -> None:
    row = s.scalar(select(AliasRow).where(AliasRow.model_id == model_id, AliasRow.name == alias))
    if row is None:
        s.add(AliasRow(model_id=model_id, name=alias, version_id=version_id))
    else:
        row.version_id = version_id
