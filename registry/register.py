"""Registering a model: validate, import, hash, analyse, store, then record it in one transaction.

Nothing is written until the source has been checked and analysed, so bad input leaves no row and no
file. The SQL rows go in last, in one transaction guarded by unique constraints: a process that loses
a race to another registering the same bytes reads the winner's version instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from genie.errors import AlreadyExists, InvalidRequest, Unavailable
from genie.semantic import Profile

from . import cache, queries
from .analysis import Target
from .artifacts import hash_file, hash_files
from .factory import import_factory
from .gguf import CheckedGguf, check_gguf, import_gguf
from .hf import import_hf_folder
from .imported import Imported
from .name_lock import registering
from .names import check_alias, check_name, parse_version
from .progress import byte_bar
from .records import VersionRecord
from .schema import ArtifactRow, ModelRow, VersionRow
from .sources import Source, SourceKind, parse_source
from .store import Registry, set_alias_row

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Pending:
    """A checked, hashed, analysed and stored import, waiting for its SQL rows."""

    source_sha: str | None  # of the GGUF file, when the source was one
    imported: Imported
    hashes: dict[str, str]  # relative path -> sha256
    sizes: dict[str, int]  # relative path -> bytes
    content_hash: str
    profile: Profile


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    number: int | None  # the version number asked for, None for the next one
    alias: str | None
    source: Source
    progress: bool


def register(
    reg: Registry,
    name: str,
    source_text: str,
    version: int | str | None = None,
    alias: str | None = None,
    progress: bool = True,
) -> VersionRecord:
    check_name(name)
    number = parse_version(version) if version is not None else None
    if alias is not None:
        check_alias(alias)
    req = Request(name, number, alias, parse_source(source_text), progress)
    with registering(reg, name):  # another process registering this name finishes first; then we find its work
        return _register(reg, req)


def _register(reg: Registry, req: Request) -> VersionRecord:
    name, alias, progress = req.name, req.alias, req.progress
    clock = Clock()
    checked = source_sha = None
    if req.source.kind is SourceKind.GGUF:
        checked = check_gguf(req.source.path)  # before any progress bar: bad input gets one clean line
        source_sha = _hash_source(req.source.path, progress)
        clock.lap("check")
        existing = _existing(reg, name, alias, source_sha256=source_sha)
        if existing is not None:
            reg.stats.conversions_skipped += 1
            return existing
    if swept := reg.store.sweep():
        log.info("removed %d leftovers of interrupted registrations", swept)
    staging = reg.store.temp_dir(".import-")
    try:
        return _import_and_record(reg, req, staging, checked, source_sha, clock)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _import_and_record(
    reg: Registry, req: Request, staging: Path, checked: CheckedGguf | None, source_sha: str | None, clock: Clock
) -> VersionRecord:
    imported, target = _import(req, staging, checked)
    clock.lap("import")
    hashes = hash_files(imported.root, list(imported.files), req.progress)
    sizes = {path: (imported.root / path).stat().st_size for path in hashes}
    content_hash = manifest_hash(hashes, sizes)
    clock.lap("hash")
    existing = _existing(reg, req.name, req.alias, content_hash=content_hash)
    if existing is not None:
        return existing
    _check_number_free(reg, req.name, req.number)
    profile = cache.cached_profile(reg, content_hash) or _profile(reg, target, content_hash)
    _check_tokenizer(req, imported, profile)
    clock.lap("analyse")
    created = reg.store.put_all(imported.root, hashes, req.progress, move=imported.owned)
    reg.stats.blobs_stored += len(created)
    try:
        record = _commit(reg, req, Pending(source_sha, imported, hashes, sizes, content_hash, profile))
    except BaseException:
        reg.collect_garbage(set(created), {content_hash})
        raise
    reg.store.materialise(record.content_hash, hashes)
    clock.lap("store")
    log.info("registered %s from %s (%s) in %s", record.ref, req.source.uri, record.architecture, clock)
    return record


class Clock:
    """Seconds spent per phase of a registration, for the log line a user (or the benchmark) reads."""

    def __init__(self) -> None:
        self.spans: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.spans[phase] = self.spans.get(phase, 0.0) + now - self._last
        self._last = now

    def __str__(self) -> str:
        parts = ", ".join(f"{phase} {s:.1f} s" for phase, s in self.spans.items())
        return f"{sum(self.spans.values()):.1f} s ({parts})"


def manifest_hash(hashes: dict[str, str], sizes: dict[str, int]) -> str:
    """sha256 over the sorted (path, sha256, size) list: the identity of a version's content."""
    manifest = sorted([path, sha, sizes[path]] for path, sha in hashes.items())
    return hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()


def _hash_source(path: Path, progress: bool) -> str:
    with byte_bar("hashing source", path.stat().st_size, progress) as bar:
        return hash_file(path, bar)


def _import(req: Request, staging: Path, checked: CheckedGguf | None) -> tuple[Imported, Target]:
    model = inputs = None
    if req.source.kind is SourceKind.HF:
        imported = import_hf_folder(req.source.path)
    elif req.source.kind is SourceKind.GGUF:
        imported = import_gguf(checked, staging, req.progress)
    else:
        imported, model, inputs = import_factory(req.source.factory, staging)
    target = Target(
        req.name,
        imported.root,
        imported.format,
        imported.architecture,
        imported.dtype,
        imported.parameters,
        imported.details,
        model,
        inputs,
    )
    return imported, target


def _profile(reg: Registry, target: Target, content_hash: str) -> Profile:
    from .analysis import make_profile

    profile = make_profile(target)
    reg.stats.profiles_computed += 1
    reg.note_analysis(content_hash, "profile")
    log.info("analysed %s: %s", target.name, profile.summary())
    return profile


def _check_tokenizer(req: Request, imported: Imported, profile: Profile) -> None:
    """genie-serve reads an LLM's prompts with the folder's tokenizer: refuse a folder without one now, not at start."""
    if req.source.kind is not SourceKind.HF or profile.workload_type != "llm" or imported.details.get("tokenizer"):
        return
    raise InvalidRequest(
        f"{req.source.uri} holds a language model ({imported.architecture}) but no tokenizer; add its tokenizer "
        "files (tokenizer.json and tokenizer_config.json, as tokenizer.save_pretrained(folder) writes them) to the "
        "folder and register it again"
    )


def _existing(reg: Registry, name: str, alias: str | None, **where) -> VersionRecord | None:
    """The version of `name` matching `where` (content or source hash), with `alias` moved onto it."""
    with reg.write() as s:
        model = s.query(ModelRow).filter_by(name=name).one_or_none()
        row = queries.version_by(s, model.id, **where) if model else None
        if row is None:
            return None
        if alias is not None:
            set_alias_row(s, model.id, alias, row.id)
        s.flush()
        record = queries.to_record(s, model, row, reg.store)
    reg.store.materialise(record.content_hash, {a.path: a.sha256 for a in record.artifacts})
    log.info("%s already holds these bytes; nothing copied", record.ref)
    return record


def _check_number_free(reg: Registry, name: str, number: int | None) -> None:
    if number is None:
        return
    with reg.session() as s:
        model = s.query(ModelRow).filter_by(name=name).one_or_none()
        if model is not None and queries.version_by(s, model.id, number=number) is not None:
            raise AlreadyExists(
                f"{name}:{number} already exists with other content; pick another --version or leave it out"
            )


def _commit(reg: Registry, req: Request, pending: Pending) -> VersionRecord:
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            with reg.write() as s:
                model = s.query(ModelRow).filter_by(name=req.name).one_or_none()
                if model is None:
                    model = ModelRow(name=req.name)
                    s.add(model)
                    s.flush()
                row = queries.version_by(s, model.id, content_hash=pending.content_hash)
                created = row is None
                if created:
                    row = _insert_version(s, model, req, pending)
                    cache.new_profile_row(s, pending.content_hash, pending.profile)
                if req.alias is not None:
                    set_alias_row(s, model.id, req.alias, row.id)
                s.flush()
                return queries.to_record(s, model, row, reg.store, created=created)
        except IntegrityError:
            # Another process inserted the same model, version number, content or profile first; look again.
            log.info("concurrent registration of %s detected (attempt %d); retrying", req.name, attempt + 1)
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise Unavailable(
        f"could not record {req.name} after {COMMIT_ATTEMPTS} attempts: other registrations kept winning; try again"
    )


def _insert_version(s, model: ModelRow, req: Request, pending: Pending) -> VersionRow:
    number = req.number
    if number is not None and queries.version_by(s, model.id, number=number) is not None:
        raise AlreadyExists(
            f"{model.name}:{number} already exists with other content; pick another --version or leave it out"
        )
    imported = pending.imported
    row = VersionRow(
        model_id=model.id,
        number=number if number is not None else queries.next_number(s, model.id),
        source_uri=req.source.uri,
        source_sha256=pending.source_sha,
        format=imported.format,
        architecture=imported.architecture,
        dtype=imported.dtype,
        parameters=imported.parameters,
        content_hash=pending.content_hash,
        details=imported.details,
    )
    s.add(row)
    s.flush()
    for path, sha in pending.hashes.items():
        s.add(ArtifactRow(version_id=row.id, path=path, sha256=sha, bytes=pending.sizes[path]))
    return row
