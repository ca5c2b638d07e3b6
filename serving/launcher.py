"""Starts or attaches the workers a plan names and loads their fragments, replica by replica."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from genie.auth import new_link_token, read_key_file
from genie.config import GenieConfig, Launcher, ModelConfig
from genie.errors import GenieError, Unavailable
from genie.semantic import Plan, PlanFragment
from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentInfo, FragmentSpec, SeqStep
from genie.workers.process import WorkerProcess, spawn_worker
from genie.workers.programs.limits import limits_from_config, worker_args

from .reattach import load_or_reuse
from .replica import Replica, Stage

log = logging.getLogger("genie.serve")


@dataclass(slots=True)
class WorkerPool:
    """The workers of one genie-serve: name -> client, and the processes we started ourselves."""

    token: str  # the link credential every client of this pool sends
    clients: dict[str, WorkerClient] = field(default_factory=dict)
    processes: dict[str, WorkerProcess] = field(default_factory=dict)
    # Workers placed by a cluster engine (serving/ray_launcher.RayWorker): they can say where they listen after
    # a restart. `finalizers` run last at close (stopping those, removing their placement).
    placed: dict[str, object] = field(default_factory=dict)
    finalizers: list[Callable[[], None]] = field(default_factory=list)
    # One restart of a worker at a time: the fragments of several models may live on it, and each model's
    # supervisor notices its loss on its own.
    revive_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def revive_lock(self, name: str) -> asyncio.Lock:
        return self.revive_locks.setdefault(name, asyncio.Lock())

    def connect(self, name: str, address: str, timeout: float) -> WorkerClient:
        self.clients[name] = WorkerClient(address, timeout=timeout, token=self.token)
        return self.clients[name]

    def adopt(self, name: str, proc: WorkerProcess, timeout: float) -> WorkerClient:
        """A launched worker process, started or restarted, under its plan name."""
        self.processes[name] = proc
        return self.connect(name, proc.address, timeout)

    async def close(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(p.stop, grace) for p in self.processes.values()))
        for finalize in self.finalizers:
            await asyncio.to_thread(finalize)


def _threads(cfg: GenieConfig) -> int:
    return cfg.workers.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.workers.launch))


def link_token(cfg: GenieConfig) -> str:
    """The credential of every worker link this genie-serve opens: a fresh random one per start for the
    workers it launches; attached workers are started with the one in `workers.link_token_file`."""
    if cfg.workers.link_token_file:
        return read_key_file(cfg.workers.link_token_file, "workers.link_token_file")[0]
    return new_link_token()


def spawn_one(cfg: GenieConfig, token: str, artifact_root: str) -> WorkerProcess:
    return spawn_worker(
        cfg.workers.device, _threads(cfg), None, cfg.workers.start_timeout_s, token=token,
        artifact_roots=[artifact_root], extra_args=worker_args(limits_from_config(cfg.workers.programs)),
    )


async def start_workers(cfg: GenieConfig, names: set[str], step_timeout: float, artifact_root: str,
                        plans: list[Plan] | None = None) -> WorkerPool:
    """Starts the workers the plan uses: `worker-N` are launched on 127.0.0.1 (or placed as Ray actors with
    launcher ray: then `plans` must be given, they size the actors), the others are attached by the address they
    are named by (`registry.cluster.cluster_from_config` names them so)."""
    pool = WorkerPool(token=link_token(cfg))
    if cfg.workers.launcher == Launcher.RAY:
        return await _start_on_ray(cfg, names, step_timeout, artifact_root, plans or [], pool)
    launched = sorted((n for n in names if n not in cfg.workers.addresses), key=lambda n: (len(n), n))
    attached = [a for a in cfg.workers.addresses if a in names]
    try:
        procs = await asyncio.gather(
            *(asyncio.to_thread(spawn_one, cfg, pool.token, artifact_root) for _ in launched),
            return_exceptions=True,
        )
        for name, proc in zip(launched, procs, strict=True):
            if isinstance(proc, BaseException):
                raise proc
            pool.adopt(name, proc, step_timeout)
        for address in attached:
            client = pool.connect(address, address, step_timeout)
            try:
                await client.health(timeout=5.0)
            except GenieError as exc:
                raise Unavailable(f"cannot reach the worker at {address}: {exc}") from None
    except BaseException:
        await pool.close(grace=1.0)
        raise
    return pool


async def _start_on_ray(cfg: GenieConfig, names: set[str], step_timeout: float, artifact_root: str,
                        plans: list[Plan], pool: WorkerPool) -> WorkerPool:
    from .ray_launcher import start_ray_workers

    fleet, addresses = await start_ray_workers(cfg, plans, names, pool.token, artifact_root)
    pool.placed.update(fleet.workers)
    pool.finalizers.append(fleet.close)
    try:
        for name, address in addresses.items():
            await pool.connect(name, address, step_timeout).health(timeout=step_timeout)
    except BaseException:
        await pool.close(grace=1.0)
        raise
    return pool


def check_servable(plan: Plan) -> None:
    """An LLM plan the router can run: replicas or pipelines of decoder-layer ranges."""
    split = sorted({f.role for f in plan.fragments if f.role in ("prefill", "decode")})
    if split or any(f.layer_start is None for f in plan.fragments):
        raise Unavailable(
            f"plan strategy {plan.strategy!r} is not served yet for LLMs (genie-serve runs LLM replicas and "
            "pipelines); use a cluster where the planner picks replicas or a pipeline"
        )


def fragment_specs(plan: Plan, model_dir: str, cfg: GenieConfig, hashes: dict[str, str],
                   model: ModelConfig | None = None) -> dict[str, FragmentSpec]:
    """fragment_id -> what its worker loads; `hashes` (file -> sha256, the registry's record) are checked by
    the worker before it reads a byte of the weights. `model` defaults to the config's one model."""
    model = model or cfg.served_models[0]
    return {
        f.fragment_id: FragmentSpec(
            fragment_id=f.fragment_id,
            model_dir=str(model_dir),
            layer_start=f.layer_start or 0,
            layer_end=-1 if f.layer_end is None else f.layer_end,
            has_embedding=f.has_embedding,
            has_head=f.has_head,
            dtype=model.dtype.value,
            kv_cache_bytes=cfg.workers.kv_cache_mib << 20,
            block_size=cfg.workers.block_size,
            expected_sha256=tuple(sorted(hashes.items())),
            quantization=model.quantization.value,
        )
        for f in plan.fragments
    }


async def load_replica(
    fragments: list[PlanFragment], pool: WorkerPool, specs: dict[str, FragmentSpec], timeout: float
) -> tuple[Replica, list[FragmentInfo]]:
    """Loads one replica's fragments (stage order) on their workers."""
    infos: list[FragmentInfo] = await asyncio.gather(
        *(load_or_reuse(pool.clients[f.worker], specs[f.fragment_id], timeout) for f in fragments)
    )
    name = replica_name(fragments[0])
    replica = Replica(name, [], min(info.num_kv_blocks for info in infos), kv_identity(fragments, specs, infos))
    for frag, info in zip(fragments, infos, strict=True):
        replica.stages.append(Stage(frag.worker, pool.clients[frag.worker], frag.fragment_id))
        log.info(
            "loaded %s on %s: %d layers, %d KV blocks of %d tokens, %s",
            frag.fragment_id, frag.worker, info.num_layers, info.num_kv_blocks, info.block_size, info.dtype,
        )
    return replica, infos


def kv_identity(fragments: list[PlanFragment], specs: dict[str, FragmentSpec], infos: list[FragmentInfo]) -> bytes:
    """Everything besides the tokens that decides a replica's KV blocks: the seed of their prefix-cache names."""
    parts = []
    for frag, info in zip(fragments, infos, strict=True):
        spec = specs[frag.fragment_id]
        parts.append(f"{spec.layer_start}-{spec.layer_end}|{spec.has_embedding}|{info.dtype}|{info.block_size}|"
                     f"{spec.expected_sha256}")
    return "\n".join(parts).encode()


def replica_name(fragment: PlanFragment) -> str:
    return f"replica-{fragment.replica}"


async def load_replicas(
    plan: Plan, pool: WorkerPool, specs: dict[str, FragmentSpec], timeout: float
) -> tuple[dict[str, Replica], list[FragmentInfo]]:
    """Loads every fragment of the plan on its worker; groups them into replicas of ordered stages."""
    loaded = await asyncio.gather(*(load_replica(group, pool, specs, timeout) for group in plan.replicas()))
    replicas = {replica.name: replica for replica, _ in loaded}
    return replicas, [info for _, infos in loaded for info in infos]


async def warm_one(replica: Replica, prompt_ids: list[int], timeout: float) -> None:
    """One real generation step; a replica is ready only after it succeeded."""
    seq_id = f"warmup-{secrets.token_hex(8)}"
    await replica.step([SeqStep(seq_id, 0, token_ids=prompt_ids, sample=True)], timeout=timeout)
    await replica.release([seq_id], timeout=timeout)
    replica.warm = True


async def warm_up(replicas: dict[str, Replica], prompt_ids: list[int], timeout: float) -> None:
    await asyncio.gather(*(warm_one(r, prompt_ids, timeout) for r in replicas.values()))


