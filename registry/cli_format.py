"""Text output of `genie-models` (the --json output is the records' to_dict())."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .names import human_count
from .records import ModelSummary, PlanRecord, VerifyReport, VersionRecord

if TYPE_CHECKING:  # genie.semantic pulls in torch and transformers: seconds, for a type hint
    from genie.semantic import Plan, Profile


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def registered_line(record: VersionRecord) -> str:
    size = human_bytes(record.total_bytes)
    what = f"{record.architecture}, {human_count(record.parameters)} parameters, {record.dtype}, {size}"
    if record.created:
        return f"registered {record.ref} ({what})"
    return f"{record.ref} already holds this model ({what}); nothing copied"


def models_table(models: list[ModelSummary]) -> str:
    if not models:
        return "no models registered; add one with `genie-models register NAME SOURCE`"
    rows = [("NAME", "VERSIONS", "ALIASES")]
    for m in models:
        aliases = ", ".join(f"{a}->{v}" for a, v in m.aliases.items()) or "-"
        rows.append((m.name, ", ".join(map(str, m.versions)) or "-", aliases))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows)


def version_text(record: VersionRecord, profile: Profile | None, analyser: str, plans: list[PlanRecord]) -> str:
    files = ", ".join(a.path for a in record.artifacts)
    missing = f"none for analyser {analyser}; run genie-models analyze {record.name}"
    aliases = f"  (aliases: {', '.join(record.aliases)})" if record.aliases else ""
    lines = [
        f"{record.ref}{aliases}",
        f"  architecture  {record.architecture}",
        f"  parameters    {human_count(record.parameters)} ({record.parameters:,})",
        f"  dtype         {record.dtype}",
        f"  source        {record.source} ({record.format})",
        f"  content       sha256:{record.content_hash}",
        f"  created       {record.created_at:%Y-%m-%d %H:%M:%S}",
        f"  status        {record.status}",
        f"  folder        {record.path}",
        f"  files         {len(record.artifacts)} ({human_bytes(record.total_bytes)}): {files}",
        f"  profile       {profile.summary() if profile else missing}",
    ]
    if profile:
        lines += [f"                - {line}" for line in profile.explanation]
    if not plans:
        lines.append(f"  plans         none cached; make one with genie-models plan {record.ref} --config FILE")
    for p in plans:
        workers = len(p.cluster.workers)
        lines.append(f"  plan          cluster {p.cluster_fingerprint[:12]} ({workers} workers): {p.plan.summary()}")
    return "\n".join(lines)


def plan_text(record: VersionRecord, plan: Plan, fingerprint: str, cached: bool) -> str:
    origin = "read from the registry" if cached else "computed now and stored"
    lines = [f"plan for {record.ref} on cluster {fingerprint[:12]} ({origin})", f"  {plan.summary()}"]
    for f in plan.fragments:
        layers = f"layers {f.layer_start}-{f.layer_end}" if f.layer_start is not None else f"{len(f.nodes)} nodes"
        lines.append(f"  {f.fragment_id}: {f.worker} replica {f.replica} stage {f.stage}, {layers} - {f.reason}")
    lines += [f"  reason: {r}" for r in plan.reasons]
    return "\n".join(lines)


def verify_text(reports: list[VerifyReport]) -> str:
    lines = []
    for r in reports:
        if r.ok:
            lines.append(f"{r.ref}: ok ({r.files} files, {human_bytes(r.bytes)} re-hashed)")
        else:
            lines.append(f"{r.ref}: DAMAGED")
            lines += [f"  {d.path}: {d.problem}" for d in r.damage]
    return "\n".join(lines)
