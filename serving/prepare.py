"""Before any worker starts: each served model's registry version, verified files, profile and cached plan.

Several models share the workers, so their fragments get ids of their own (`<model>.<fragment>`), and the
fragments placed on one worker must fit its memory together; a config that asks for more is refused here,
with the numbers, before anything is loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from genie.config import GenieConfig, ModelConfig
from genie.errors import InvalidRequest, NotFound
from genie.registry.cli_format import verify_text
from genie.registry.cluster import cluster_from_config
from genie.registry.records import VersionRecord
from genie.registry.store import Registry
from genie.semantic import ClusterSpec, Plan
from genie.semantic.profile import Profile

from .plans import pin_plan

log = logging.getLogger("genie.serve")


@dataclass(frozen=True, slots=True)
class Prepared:
    config: ModelConfig
    version: VersionRecord
    profile: Profile
    plan: Plan
    cluster: ClusterSpec | None = None  # the workers it was planned for (cluster_from_config asks Ray once)

    @property
    def is_llm(self) -> bool:
        return self.profile.workload_type == "llm"


def _verify(registry: Registry, version: VersionRecord) -> None:
    """Re-hashes the version's artifacts once per start; damaged weights are refused, never served."""
    (report,) = registry.verify(version.name, version.version)
    if not report.ok:
        raise InvalidRequest(
            f"refusing to serve {version.ref}: its stored files do not match the registry's record\n"
            f"{verify_text([report])}\nre-register the model (genie-models delete, then register) or restore "
            f"the files; `genie-models verify {version.ref}` re-checks them"
        )
    log.info("verified %d artifacts of %s (%d bytes)", report.files, version.ref, report.bytes)


async def prepare_models(cfg: GenieConfig) -> list[Prepared]:
    """Registry lookups (registering first where the config says so) and cached plans, off the event loop."""
    prepared, missing = await prepare_available(cfg)
    if missing:
        raise NotFound(next(iter(missing.values())))
    return prepared


async def prepare_available(cfg: GenieConfig) -> tuple[list[Prepared], dict[str, str]]:
    """Like prepare_models; with `registry.poll_interval_s` set, a model the registry lacks is left out and
    returned as {name: why} instead of stopping the start (serving/registry_watch loads it once registered)."""

    def work() -> tuple[list[Prepared], dict[str, str]]:
        cluster = cluster_from_config(cfg)
        out, missing = [], {}
        with Registry.from_config(cfg.registry) as registry:
            for model in cfg.served_models:
                try:
                    out.append(prepare_one(cfg, registry, cluster, model))
                except NotFound as exc:
                    if cfg.registry.poll_interval_s is None:
                        raise
                    missing[model.name] = str(exc)
        if len(out) > 1:
            check_memory(out, {w.name: w.memory_bytes for w in cluster.workers})
        return out, missing

    return await asyncio.to_thread(work)


def prepare_one(cfg: GenieConfig, registry: Registry, cluster: ClusterSpec, model: ModelConfig) -> Prepared:
    """One model's verified version, profile and plan (fragment ids of its own when the config lists several)."""
    version = registry.ensure(model, progress=False)
    _verify(registry, version)
    profile = registry.get_profile(version)
    plan = pin_plan(model, profile, cluster, registry.get_or_make_plan(version, cluster))
    stats = registry.stats
    log.info(
        "model %s (%s): plan %s with %d fragments (profiles computed %d, plans computed %d, plans "
        "loaded %d)", version.ref, profile.workload_type, plan.strategy, len(plan.fragments),
        stats.profiles_computed, stats.plans_computed, stats.plans_loaded,
    )
    if len(cfg.served_models) > 1:
        plan = namespaced(plan, model.name)
    return Prepared(model, version, profile, plan, cluster)


def namespaced(plan: Plan, model: str) -> Plan:
    """The plan with fragment ids of this model's own, so two models' fragments never share an id on a worker."""
    fragments = [dataclasses.replace(f, fragment_id=f"{model}.{f.fragment_id}") for f in plan.fragments]
    transfers = [dataclasses.replace(t, src=f"{model}.{t.src}", dst=f"{model}.{t.dst}") for t in plan.transfers]
    return dataclasses.replace(plan, fragments=fragments, transfers=transfers)


def check_memory(prepared: list[Prepared], budgets: dict[str, int]) -> None:
    """The fragments every model puts on a worker must fit that worker's memory together."""
    use: dict[str, list[tuple[str, int]]] = {}
    for p in prepared:
        for f in p.plan.fragments:
            use.setdefault(f.worker, []).append((p.config.name, f.memory_bytes))
    for worker, parts in sorted(use.items()):
        total = sum(n for _, n in parts)
        budget = budgets.get(worker)
        if budget is not None and total > budget:
            detail = ", ".join(f"{name} {n / 2**20:.0f} MiB" for name, n in parts)
            raise InvalidRequest(
                f"the models do not fit {worker} together: {detail} = {total / 2**20:.0f} MiB, over its "
                f"{budget / 2**20:.0f} MiB (workers.memory_mib); serve fewer models, add workers, or lower "
                "workers.kv_cache_mib"
            )
