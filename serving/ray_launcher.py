"""`workers.launcher: ray`: each worker the plan names runs as a Ray actor, placed by the resources it needs.

The actor starts the same `genie-worker` process the local launcher starts (its child, on the actor's node)
and reports the address it listens on; genie-serve then talks to it over our own gRPC link, so Ray places and
restarts workers but never carries a step. The link token is an argument of the actor's constructor: it
travels inside Ray's own (authenticated) task data, never on a command line, in an environment that Ray's
state API shows, or in a log.

A replica's fragments share one placement group: PACK keeps a pipeline's stages on one node where they fit,
SPREAD puts branch-parallel encoders on different nodes where it can. Ray restarts an actor whose process died
(`max_restarts`); the supervisor notices the replica's lost link, asks the actor for its new address and
reloads the replica there, as it restarts a local worker.

With `workers.ray_namespace` the actors and placement groups are detached and named in that namespace: they
outlive a genie-serve that dies, and the next one started with that config takes the live ones over (its
fragments are then reused as loaded, serving/reattach.py). Closing the fleet (a stop for good) removes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from genie.config import GenieConfig
from genie.errors import GenieError, Unavailable
from genie.registry import ray_capacity
from genie.registry.cluster import cluster_from_config, device_kind
from genie.semantic import Plan, PlanFragment
from genie.workers.programs.limits import limits_from_config, worker_args

from .ray_actor import WorkerActor

log = logging.getLogger("genie.serve")

SPREAD_STRATEGIES = {"branch_parallel"}  # independent branches: apart is as good as together, and survives more
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class ActorResources:
    """What one worker actor reserves on its node (Ray's logical resources)."""

    num_cpus: float
    num_gpus: float
    memory: int  # bytes: the plan's memory for the fragments on this worker
    custom: tuple[tuple[str, float], ...] = ()  # workers.ray_resources

    def bundle(self) -> dict[str, float]:
        """The placement-group bundle; Ray refuses zero amounts, so they are left out."""
        amounts = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": float(self.memory), **dict(self.custom)}
        return {k: v for k, v in amounts.items() if v > 0}

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory,
                "resources": dict(self.custom)}


def actor_resources(cfg: GenieConfig, fragments: Iterable[PlanFragment], device: str) -> ActorResources:
    """One CPU per engine thread (workers.threads, default 1), one GPU on a CUDA device, and the memory the plan
    reserved for every fragment this worker holds (weights plus KV)."""
    memory = sum(f.memory_bytes for f in fragments)
    return ActorResources(
        num_cpus=float(cfg.workers.threads or 1),
        num_gpus=1.0 if device_kind(device) == "cuda" else 0.0,
        memory=max(memory, 1),
        custom=tuple(sorted(cfg.workers.ray_resources.items())),
    )


@dataclass(frozen=True, slots=True)
class Group:
    """Workers placed together: those that share a replica (of any served model)."""

    workers: tuple[str, ...]
    strategy: str  # Ray's PACK or SPREAD


def placement_groups(plans: Iterable[Plan]) -> list[Group]:
    """Workers joined by a replica, in connected groups; SPREAD where a plan's strategy gains from it."""
    parent: dict[str, str] = {}

    def root(w: str) -> str:
        while parent.setdefault(w, w) != w:
            w = parent[w]
        return w

    spread: set[str] = set()
    for plan in plans:
        for replica in plan.replicas():
            workers = [f.worker for f in replica]
            for w in workers[1:]:
                parent[root(w)] = root(workers[0])
            if plan.strategy in SPREAD_STRATEGIES:
                spread.update(workers)
            root(workers[0])
    members: dict[str, list[str]] = {}
    for w in sorted(parent, key=lambda n: (len(n), n)):
        members.setdefault(root(w), []).append(w)
    return [Group(tuple(ws), "SPREAD" if spread & set(ws) else "PACK") for ws in members.values()]


@dataclass(slots=True)
class RayWorker:
    """genie-serve's handle on one worker actor."""

    name: str
    actor: Any  # ray.actor.ActorHandle
    resources: ActorResources

    async def address(self, timeout: float) -> str:
        """Where the actor's genie-worker listens now; waits for an actor Ray is restarting."""
        ray = ray_capacity.import_ray()
        try:
            return await asyncio.to_thread(ray.get, self.actor.address.remote(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise Unavailable(f"the Ray actor of {self.name} gave no address within {timeout:g} s") from None
        except ray.exceptions.RayError as exc:
            raise Unavailable(f"the Ray actor of {self.name} failed: {_first_lines(exc)}") from None

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        ray = ray_capacity.import_ray()
        try:
            ray.get(self.actor.stop.remote(grace), timeout=grace + 5.0)
        except ray.exceptions.RayError:
            pass  # gone already; the kill below makes sure
        ray.kill(self.actor, no_restart=True)


@dataclass(slots=True)
class RayFleet:
    """The actors and placement groups of one genie-serve, and whether it started the Ray head itself."""

    workers: dict[str, RayWorker] = field(default_factory=dict)
    groups: list[Any] = field(default_factory=list)
    started_head: bool = False

    def close(self) -> None:
        ray = ray_capacity.import_ray()
        with ThreadPoolExecutor(max(1, len(self.workers))) as pool:  # each waits out its worker's grace period
            list(pool.map(RayWorker.stop, self.workers.values()))
        for pg in self.groups:
            ray.util.remove_placement_group(pg)
        # A driver that exits still connected aborts in Ray's core worker; leaving a cluster we joined does not
        # stop it, and a head we started stops with us.
        ray_capacity.disconnect()


async def start_ray_workers(cfg: GenieConfig, plans: list[Plan], names: set[str], token: str,
                            artifact_root: str) -> tuple[RayFleet, dict[str, str]]:
    """Places one actor per worker name (or, with workers.ray_namespace, takes the live one a previous
    genie-serve left there); returns the fleet and each worker's address."""
    ray = ray_capacity.import_ray()
    fleet = RayFleet(started_head=ray_capacity.connect(cfg.workers.ray_address, cfg.workers.ray_namespace))
    try:
        devices = {w.name: w.device for w in cluster_from_config(cfg).workers}
        namespace = cfg.workers.ray_namespace or f"genie-serve-{os.getpid()}-{secrets.token_hex(3)}"
        for group in placement_groups(plans):
            workers = [w for w in group.workers if w in names]
            res = [actor_resources(cfg, [f for p in plans for f in p.fragments_on(w)], devices[w]) for w in workers]
            pg = await _group_for(ray, cfg, [r.bundle() for r in res], group, workers, namespace)
            fleet.groups.append(pg)
            for i, (worker, r) in enumerate(zip(workers, res, strict=True)):
                fleet.workers[worker] = _actor_for(ray, cfg, worker, r, pg, i, namespace, token, artifact_root)
        found = await asyncio.gather(*(w.address(cfg.workers.start_timeout_s) for w in fleet.workers.values()))
        addresses = dict(zip(fleet.workers, found, strict=True))
    except BaseException:
        await asyncio.to_thread(fleet.close)
        raise
    for worker, address in addresses.items():
        log.info("%s runs as Ray actor genie-%s in namespace %s at %s (%s)", worker, worker, namespace, address,
                 fleet.workers[worker].resources)
    return fleet, addresses


def _actor_for(ray: Any, cfg: GenieConfig, worker: str, r: ActorResources, pg: Any, index: int, namespace: str,
               token: str, artifact_root: str) -> RayWorker:
    """The live actor of `worker` a previous genie-serve left in the namespace (workers.ray_namespace), or a
    new one in bundle `index` of `pg`; detached when it is to outlive this genie-serve."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    name = f"genie-{worker}"
    if cfg.workers.ray_namespace is not None:
        try:
            actor = ray.get_actor(name, namespace=namespace)
        except ValueError:
            pass  # none left: start one
        else:
            log.info("re-attaching to Ray actor %s in namespace %s, left by a previous genie-serve", name, namespace)
            return RayWorker(worker, actor, r)
    lifetime = {"lifetime": "detached"} if cfg.workers.ray_namespace is not None else {}
    actor = ray.remote(WorkerActor).options(
        **r.options(), name=name, namespace=namespace, max_restarts=-1 if cfg.workers.restart else 0,
        max_task_retries=3, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
        **lifetime,
    ).remote(_worker_device(cfg.workers.device), int(r.num_cpus), cfg.workers.start_timeout_s, token,
             [artifact_root], cfg.workers.ray_address == "local",
             worker_args(limits_from_config(cfg.workers.programs)))
    return RayWorker(worker, actor, r)


async def _group_for(ray: Any, cfg: GenieConfig, bundles: list[dict[str, float]], group: Group, workers: list[str],
                     namespace: str) -> Any:
    """The group's placement group: with workers.ray_namespace a named, detached one, taken over from a previous
    genie-serve when it reserves the same bundles (else removed, with its actors, and made afresh)."""
    if cfg.workers.ray_namespace is None:
        return await _placed_group(ray, bundles, group, cfg.workers.start_timeout_s)
    name = f"genie-{'+'.join(workers)}"
    try:
        old = ray.util.get_placement_group(name)
    except ValueError:
        old = None
    if old is not None:
        if [dict(b) for b in old.bundle_specs] == bundles:
            return old
        log.info("placement group %s in namespace %s reserves %s, the plan now asks for %s; replacing it",
                 name, namespace, old.bundle_specs, bundles)
        for worker in workers:
            _kill_named(ray, f"genie-{worker}", namespace)
        ray.util.remove_placement_group(old)
    return await _placed_group(ray, bundles, group, cfg.workers.start_timeout_s,
                               {"name": name, "lifetime": "detached"})


def _kill_named(ray: Any, name: str, namespace: str) -> None:
    try:
        ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    except ValueError:
        pass  # not there


async def _placed_group(ray: Any, bundles: list[dict[str, float]], group: Group, timeout: float,
                        named: dict[str, str] | None = None) -> Any:
    pg = ray.util.placement_group(bundles, strategy=group.strategy, **(named or {}))
    try:
        await asyncio.to_thread(ray.get, pg.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.util.remove_placement_group(pg)
        raise Unavailable(
            f"the Ray cluster cannot place {', '.join(group.workers)} ({group.strategy}: {bundles}) within "
            f"{timeout:g} s; it has {ray.available_resources()}. Add nodes, or lower workers.threads, "
            "workers.kv_cache_mib or the number of workers"
        ) from None
    return pg


def _worker_device(device: str) -> str:
    """Ray shows an actor only the GPU it reserved, as cuda:0; "cuda:N" would name a GPU it cannot see."""
    return "cuda" if device_kind(device) == "cuda" else device


def _first_lines(exc: GenieError | Exception, lines: int = 6) -> str:
    return "\n".join(str(exc).strip().splitlines()[:lines])
