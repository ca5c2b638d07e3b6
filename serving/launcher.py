"""Starts or attaches the workers a plan names, loads their fragments, and watches that they stay up."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from genie.config import GenieConfig
from genie.errors import GenieError, Unavailable
from genie.semantic import Plan
from genie.workers.client import WorkerClient
from genie.workers.engine.types import FragmentInfo, FragmentSpec, SeqStep
from genie.workers.process import WorkerProcess, spawn_worker

from .replica import Replica, Stage

log = logging.getLogger("genie.serve")


@dataclass(slots=True)
class WorkerPool:
    """The workers of one genie-serve: name -> client, and the processes we started ourselves."""

    clients: dict[str, WorkerClient] = field(default_factory=dict)
    processes: dict[str, WorkerProcess] = field(default_factory=dict)

    async def close(self, grace: float = 5.0) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        await asyncio.gather(*(asyncio.to_thread(p.stop, grace) for p in self.processes.values()))


def _threads(cfg: GenieConfig) -> int:
    return cfg.workers.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.workers.launch))


async def start_workers(cfg: GenieConfig, names: set[str], step_timeout: float) -> WorkerPool:
    """Starts the workers the plan uses: `worker-N` are launched on 127.0.0.1, the others are attached by the
    address they are named by (`registry.cluster.cluster_from_config` names them so)."""
    pool = WorkerPool()
    launched = sorted((n for n in names if n not in cfg.workers.addresses), key=lambda n: (len(n), n))
    attached = [a for a in cfg.workers.addresses if a in names]
    try:
        procs = await asyncio.gather(
            *(
                asyncio.to_thread(
                    spawn_worker, cfg.workers.device, _threads(cfg), None, cfg.workers.start_timeout_s
                )
                for _ in launched
            ),
            return_exceptions=True,
        )
        for name, proc in zip(launched, procs, strict=True):
            if isinstance(proc, BaseException):
                raise proc
            pool.processes[name] = proc
            pool.clients[name] = WorkerClient(proc.address, timeout=step_timeout)
        for address in attached:
            client = WorkerClient(address, timeout=step_timeout)
            pool.clients[address] = client
            try:
                await client.health(timeout=5.0)
            except GenieError as exc:
                raise Unavailable(f"cannot reach the worker at {address}: {exc}") from None
    except BaseException:
        await pool.close(grace=1.0)
        raise
    return pool


async def load_replicas(
    plan: Plan, pool: WorkerPool, model_dir: str, cfg: GenieConfig
) -> tuple[dict[str, Replica], list[FragmentInfo]]:
    """Loads every fragment of the plan on its worker; groups them into replicas of ordered stages."""
    split = sorted({f.role for f in plan.fragments if f.role in ("prefill", "decode")})
    if split or any(f.layer_start is None for f in plan.fragments):
        raise Unavailable(
            f"plan strategy {plan.strategy!r} is not served yet (genie-serve runs LLM replicas and pipelines); "
            "use a cluster where the planner picks replicas or a pipeline"
        )
    specs = [
        FragmentSpec(
            fragment_id=f.fragment_id,
            model_dir=str(model_dir),
            layer_start=f.layer_start or 0,
            layer_end=-1 if f.layer_end is None else f.layer_end,
            has_embedding=f.has_embedding,
            has_head=f.has_head,
            dtype=cfg.model.dtype.value,
            kv_cache_bytes=cfg.workers.kv_cache_mib << 20,
            block_size=cfg.workers.block_size,
        )
        for f in plan.fragments
    ]
    infos: list[FragmentInfo] = await asyncio.gather(
        *(
            pool.clients[f.worker].load_fragment(spec, timeout=cfg.workers.start_timeout_s)
            for f, spec in zip(plan.fragments, specs, strict=True)
        )
    )
    replicas: dict[str, Replica] = {}
    ordered = sorted(zip(plan.fragments, infos, strict=True), key=lambda fi: (fi[0].replica, fi[0].stage))
    for frag, info in ordered:
        name = f"replica-{frag.replica}"
        stage = Stage(frag.worker, pool.clients[frag.worker], frag.fragment_id)
        replica = replicas.setdefault(name, Replica(name, [], info.num_kv_blocks))
        replica.stages.append(stage)
        replica.num_blocks = min(replica.num_blocks, info.num_kv_blocks)
        log.info(
            "loaded %s on %s: %d layers, %d KV blocks of %d tokens, %s",
            frag.fragment_id, frag.worker, info.num_layers, info.num_kv_blocks, info.block_size, info.dtype,
        )
    return replicas, infos


async def warm_up(replicas: dict[str, Replica], prompt_ids: list[int], timeout: float) -> None:
    """Runs one real generation step on every replica; a replica is ready only after it succeeded."""

    async def one(replica: Replica) -> None:
        seq_id = f"warmup-{replica.name}"
        await replica.step([SeqStep(seq_id, 0, token_ids=prompt_ids, sample=True)], timeout=timeout)
        await replica.release([seq_id], timeout=timeout)
        replica.warm = True

    await asyncio.gather(*(one(r) for r in replicas.values()))


async def watch_workers(
    replicas: dict[str, Replica],
    pool: WorkerPool,
    on_lost: Callable[[str, str], None],
    interval: float = 1.0,
) -> None:
    """Checks every worker each `interval` s: our own processes by exit status, all of them by Health."""
    misses: dict[str, int] = {}
    while True:
        for replica in replicas.values():
            if not replica.alive:
                continue
            for worker in replica.workers:
                reason = await _check_worker(worker, pool, misses)
                if reason is not None:
                    on_lost(replica.name, reason)
                    break
        await asyncio.sleep(interval)


async def _check_worker(worker: str, pool: WorkerPool, misses: dict[str, int]) -> str | None:
    proc = pool.processes.get(worker)
    if proc is not None and not proc.alive():
        return f"worker {worker} (pid {proc.pid}) exited with code {proc.returncode}"
    try:
        await pool.clients[worker].health(timeout=2.0)
        misses[worker] = 0
        return None
    except GenieError as exc:
        misses[worker] = misses.get(worker, 0) + 1
        if misses[worker] >= 2:
            return f"worker {worker} stopped answering health checks: {exc}"
        return None
