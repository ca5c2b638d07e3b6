"""Analyse once: profiles keyed by (content hash, analyser version), plans by (profile, cluster fingerprint).

Reads come first; the semantic layer runs only on a miss, and every hit or miss is counted in
`Registry.stats` and logged, so a second start can show that it computed nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from genie.semantic import ClusterSpec, Plan, Profile

from .analysis import Target, analyzer_version, make_plan, make_profile
from .name_lock import analysing
from .records import PlanRecord, VersionRecord
from .schema import PlanRow, ProfileRow

if TYPE_CHECKING:
    from .store import Registry

log = logging.getLogger(__name__)


def target_of(record: VersionRecord) -> Target:
    return Target(
        name=record.name,
        folder=record.path,
        format=record.format,
        architecture=record.architecture,
        dtype=record.dtype,
        parameters=record.parameters,
        details=record.details,
    )


def get_profile(reg: Registry, record: VersionRecord) -> Profile:
    key = analyzer_version()
    with reg.session() as s:
        row = _profile_row(s, record.content_hash, key)
        profile = _decode(Profile, row.data, f"profile of {record.ref}") if row else None
    if profile is not None:
        reg.stats.profiles_loaded += 1
        log.info("profile of %s read from the registry (analyser %s)", record.ref, key)
        return profile
    with analysing(reg, record.content_hash):  # a process that got here first stores it; then we read it
        profile = cached_profile(reg, record.content_hash)
        if profile is not None:
            reg.stats.profiles_loaded += 1
            log.info("profile of %s read from the registry, stored meanwhile by another process", record.ref)
            return profile
        return analyse(reg, record)


def analyse(reg: Registry, record: VersionRecord) -> Profile:
    """Computes the profile afresh and stores it, replacing any cached one for this analyser."""
    profile = make_profile(target_of(record))
    reg.stats.profiles_computed += 1
    reg.note_analysis(record.content_hash, "profile")
    save_profile(reg, record.content_hash, profile)
    log.info("analysed %s: %s", record.ref, profile.summary())
    return profile


def save_profile(reg: Registry, content_hash: str, profile: Profile) -> None:
    key = analyzer_version()
    try:
        with reg.write() as s:
            row = _profile_row(s, content_hash, key)
            if row is None:
                s.add(_new_profile_row(content_hash, key, profile))
            else:
                row.data, row.workload_type = profile.to_dict(), profile.workload_type
                s.execute(PlanRow.__table__.delete().where(PlanRow.profile_id == row.id))  # made from the old one
    except IntegrityError:
        pass  # another process stored this content's profile meanwhile; analysis is deterministic


def new_profile_row(s, content_hash: str, profile: Profile) -> None:
    """Adds the profile inside a caller's transaction unless one is cached already (registration path)."""
    key = analyzer_version()
    if _profile_row(s, content_hash, key) is None:
        s.add(_new_profile_row(content_hash, key, profile))


def cached_profile(reg: Registry, content_hash: str) -> Profile | None:
    with reg.session() as s:
        row = _profile_row(s, content_hash, analyzer_version())
        return _decode(Profile, row.data, "cached profile") if row else None


def get_or_make_plan(reg: Registry, record: VersionRecord, cluster: ClusterSpec) -> Plan:
    profile = get_profile(reg, record)
    fingerprint = cluster.fingerprint()
    plan, profile_id = _cached_plan(reg, record, fingerprint)
    if plan is not None:
        return plan
    with analysing(reg, record.content_hash):  # several processes starting on one cluster plan it once
        plan, profile_id = _cached_plan(reg, record, fingerprint)
        if plan is not None:
            return plan
        return _make_and_store_plan(reg, record, profile, profile_id, cluster)


def _cached_plan(reg: Registry, record: VersionRecord, fingerprint: str) -> tuple[Plan | None, int]:
    with reg.session() as s:
        profile_id = _profile_row(s, record.content_hash, analyzer_version()).id
        row = s.scalar(
            select(PlanRow).where(PlanRow.profile_id == profile_id, PlanRow.cluster_fingerprint == fingerprint)
        )
        plan = _decode(Plan, row.data, f"plan of {record.ref}") if row else None
    if plan is not None:
        reg.stats.plans_loaded += 1
        log.info("plan of %s for cluster %s read from the registry", record.ref, fingerprint[:12])
    return plan, profile_id


def _make_and_store_plan(reg: Registry, record: VersionRecord, profile: Profile, profile_id: int,
                         cluster: ClusterSpec) -> Plan:
    fingerprint = cluster.fingerprint()
    plan = make_plan(profile, cluster)
    reg.stats.plans_computed += 1
    reg.note_analysis(record.content_hash, "plan", fingerprint)
    log.info("planned %s for cluster %s: %s", record.ref, fingerprint[:12], plan.summary())
    try:
        with reg.write() as s:
            s.execute(
                PlanRow.__table__.delete().where(
                    PlanRow.profile_id == profile_id, PlanRow.cluster_fingerprint == fingerprint
                )
            )
            s.add(
                PlanRow(
                    profile_id=profile_id,
                    cluster_fingerprint=fingerprint,
                    cluster=cluster.to_dict(),
                    strategy=plan.strategy,
                    data=plan.to_dict(),
                )
            )
    except IntegrityError:
        pass  # another process stored the same plan meanwhile; plans are deterministic
    return plan


def plans_of(reg: Registry, record: VersionRecord) -> list[PlanRecord]:
    with reg.session() as s:
        rows = s.scalars(
            select(PlanRow)
            .join(ProfileRow, PlanRow.profile_id == ProfileRow.id)
            .where(ProfileRow.content_hash == record.content_hash, ProfileRow.analyzer_version == analyzer_version())
            .order_by(PlanRow.created_at)
        )
        out = []
        for row in rows:
            plan = _decode(Plan, row.data, f"plan of {record.ref}")
            cluster = _decode(ClusterSpec, row.cluster, f"cluster of a plan of {record.ref}")
            if plan is not None and cluster is not None:
                out.append(PlanRecord(row.cluster_fingerprint, cluster, plan, row.created_at))
        return out


def _profile_row(s, content_hash: str, key: str) -> ProfileRow | None:
    return s.scalar(
        select(ProfileRow).where(ProfileRow.content_hash == content_hash, ProfileRow.analyzer_version == key)
    )


def _new_profile_row(content_hash: str, key: str, profile: Profile) -> ProfileRow:
    return ProfileRow(
        content_hash=content_hash, analyzer_version=key, workload_type=profile.workload_type, data=profile.to_dict()
    )


def _decode(cls, data, what: str):
    """The cached object, or None (a miss) when the stored JSON no longer fits the class."""
    try:
        return cls.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring the cached %s: %s; it will be recomputed", what, exc)
        return None
