"""Models the config names that the registry lacked at start: looked for every `registry.poll_interval_s`, then
loaded on the running workers and served, without a restart.

Several genie-serve processes may share one registry (a PostgreSQL `registry.url` and one artifact folder as
`registry.home`); a model registered through any of them (`genie-models register` against that registry) is
found here on the next look. Its profile and plan come from the registry, computed once by whichever process
got there first (registry.name_lock). A poll rather than an admin call: every genie-serve on the registry
notices by itself, and no operator has to know which routers exist or hold a key to each of them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from genie.config import GenieConfig, Launcher, ModelConfig
from genie.errors import GenieError, NotFound, Unavailable
from genie.registry.cluster import cluster_from_config
from genie.registry.store import Registry

from .catalog import Catalog, Entry
from .launcher import WorkerPool
from .metrics import Metrics
from .prepare import Prepared, check_memory, prepare_one
from .supervisor import Supervisor

log = logging.getLogger("genie.serve")


def waiting_reason(cfg: GenieConfig, why: str) -> str:
    return (f"{why}; genie-serve looks for it in the registry every {cfg.registry.poll_interval_s:g} s "
            "(registry.poll_interval_s) and serves it once it is registered")


def workers_to_start(cfg: GenieConfig, prepared: list[Prepared], waiting: dict[str, str]) -> set[str]:
    """The workers the plans use; with models still waiting, every worker the config describes (launched or
    attached), so a model registered later finds workers to load on. Ray actors are sized by the plans, so
    there a late model must fit the actors the others' plans asked for."""
    names = {f.worker for p in prepared for f in p.plan.fragments}
    if waiting and cfg.workers.launcher != Launcher.RAY:
        names |= {w.name for w in cluster_from_config(cfg).workers}
    return names


@dataclass(slots=True)
class RegistryWatch:
    """One task: looks for the catalog's waiting models until none is left, and starts each one found."""

    cfg: GenieConfig
    pool: WorkerPool
    metrics: Metrics
    catalog: Catalog
    artifact_root: str
    loaded: list[Prepared]  # the models served so far (their memory on the workers)
    tasks: list[asyncio.Task]  # the app's background tasks: a started model's service and supervisor join them
    supervisors: list[Supervisor] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # name -> content hash that could not be served

    async def run(self) -> None:
        interval = self.cfg.registry.poll_interval_s
        assert interval is not None, "a RegistryWatch runs only with registry.poll_interval_s set"
        log.info("waiting for %s to be registered; looking every %g s", ", ".join(self.catalog.waiting), interval)
        while self.catalog.waiting:
            await asyncio.sleep(interval)  # the polling interval itself; no work is being stood in for
            await self.look()
        log.info("every model the config names is served")

    async def look(self) -> None:
        for model in [m for m in self.cfg.served_models if m.name in self.catalog.waiting]:
            prepared = None
            try:
                prepared = await asyncio.to_thread(self._prepare, model)
                if prepared is None:
                    continue  # the version refused before, unchanged
                self._check(prepared)
                entry, supervisor = await self._start(prepared)
            except NotFound as exc:
                self.catalog.waiting[model.name] = waiting_reason(self.cfg, str(exc))
                continue
            except GenieError as exc:
                self._refused(model.name, f"it is registered but cannot be served here: {exc}")
                continue
            except Exception as exc:  # a fault of ours: say so, keep serving the others, keep looking
                log.exception("model %s: loading it failed", model.name)
                self._refused(model.name, f"loading it failed: {type(exc).__name__}: {exc}")
                continue
            finally:
                if prepared is not None and model.name in self.catalog.waiting:
                    self.refused[model.name] = prepared.version.content_hash
            self.loaded.append(prepared)
            self.catalog.add(entry)
            self.supervisors.append(supervisor)
            self.tasks.append(asyncio.create_task(entry.service.run(), name=f"genie-{entry.name}"))
            self.tasks.append(asyncio.create_task(supervisor.run(), name="genie-supervisor"))
            log.info("model %s (%s), registered after this genie-serve started, is now served",
                     prepared.version.ref, entry.kind)

    def _prepare(self, model: ModelConfig) -> Prepared | None:
        """The model's version, profile and plan; None while it is the version refused last time."""
        cluster = cluster_from_config(self.cfg)
        with Registry.from_config(self.cfg.registry) as registry:
            if self.refused.get(model.name) == registry.resolve_quiet(model.name, model.version).content_hash:
                return None
            return prepare_one(self.cfg, registry, cluster, model)

    def _check(self, prepared: Prepared) -> None:
        """It fits the started workers, beside the models they already hold."""
        absent = sorted({f.worker for f in prepared.plan.fragments} - set(self.pool.clients))
        if absent:
            raise Unavailable(
                f"its plan puts fragments on {', '.join(absent)}, which this genie-serve did not start; restart "
                "genie-serve to start them"
            )
        workers = cluster_from_config(self.cfg).workers
        check_memory([*self.loaded, prepared], {w.name: w.memory_bytes for w in workers})

    async def _start(self, prepared: Prepared) -> tuple[Entry, Supervisor]:
        from .start_llm import start_llm
        from .start_stateless import start_stateless

        if prepared.is_llm:
            return await start_llm(self.cfg, prepared, self.pool, self.metrics, self.artifact_root)
        memory = {w.name: w.memory_bytes for w in cluster_from_config(self.cfg).workers}
        worker_memory = min(memory.get(f.worker, 0) for f in prepared.plan.fragments)
        return await start_stateless(self.cfg, prepared, self.pool, self.metrics, worker_memory)

    def _refused(self, name: str, why: str) -> None:
        reason = waiting_reason(self.cfg, why)
        if self.catalog.waiting.get(name) != reason:
            log.warning("model %s: %s", name, why)
        self.catalog.waiting[name] = reason
