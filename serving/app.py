"""One genie-serve process: registry -> plan -> workers -> router -> front doors, and a graceful drain.

Every background task is created and cancelled here, in one place.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from genie.auth import check_exposure, load_api_keys
from genie.config import GenieConfig
from genie.errors import InvalidRequest
from genie.registry.cli_format import verify_text
from genie.registry.cluster import cluster_from_config
from genie.registry.records import VersionRecord
from genie.registry.store import Registry

from .generation import ServedModel
from .http import HttpState
from .http_site import start_http
from .launcher import WorkerPool, fragment_specs, load_replicas, start_workers, warm_up
from .metrics import Metrics
from .router import Router
from .scheduler import Scheduler, SchedulerConfig
from .supervisor import Supervisor
from .tls import tls_pair
from .tokenizer import Tokenizer

log = logging.getLogger("genie.serve")

WORKER_STOP_GRACE_S = 5.0  # workers get SIGTERM at exit and this long before SIGKILL
ABORT_FLUSH_S = 2.0  # after the drain's abort, how long the doors get to send the last events


@dataclass(slots=True)
class Running:
    """What a started server exposes to its caller (the CLI, or tests)."""

    http_url: str
    grpc_address: str | None
    router: Router
    pool: WorkerPool
    model: ServedModel
    supervisor: Supervisor


def _model_context(model_dir: Path, cfg: GenieConfig, per_sequence_tokens: int) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    limits = [config.get("max_position_embeddings") or config.get("n_positions") or 2048, per_sequence_tokens]
    if cfg.model.max_context:
        limits.append(cfg.model.max_context)
    return int(min(limits))


async def _prepare(cfg: GenieConfig):
    """Registry lookup (registering first when the config says so) and the cached plan, off the event loop."""

    def work():
        with Registry.from_config(cfg.registry) as registry:
            version = registry.ensure(cfg.model, progress=False)
            _verify(registry, version)
            plan = registry.get_or_make_plan(version, cluster_from_config(cfg))
            return version, plan, registry.stats

    version, plan, stats = await asyncio.to_thread(work)
    log.info(
        "model %s: plan %s with %d fragments (profiles computed %d, plans computed %d, plans loaded %d)",
        version.ref, plan.strategy, len(plan.fragments), stats.profiles_computed, stats.plans_computed,
        stats.plans_loaded,
    )
    return version, plan


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


async def start(cfg: GenieConfig, stack: AsyncExitStack, http_port: int | None = None,
                grpc_port: int | None = None) -> Running:
    """Starts everything; the stack tears it down in reverse order."""
    keys = load_api_keys(cfg.serving.api_keys_file)
    check_exposure(cfg.serving.host, keys)
    version, plan = await _prepare(cfg)
    step_timeout = cfg.serving.worker_timeout_s
    artifact_root = str(cfg.registry.resolve_home())
    pool = await start_workers(cfg, {f.worker for f in plan.fragments}, step_timeout, artifact_root)
    stack.push_async_callback(pool.close, min(cfg.serving.drain_grace_s, WORKER_STOP_GRACE_S))
    hashes = {a.path: a.sha256 for a in version.artifacts}
    specs = fragment_specs(plan, str(version.path), cfg, hashes)
    replicas, infos = await load_replicas(plan, pool, specs, cfg.workers.start_timeout_s)
    tokenizer = await asyncio.to_thread(Tokenizer, version.path)
    block_size = infos[0].block_size
    per_sequence = min(r.num_blocks for r in replicas.values()) * block_size
    max_context = _model_context(version.path, cfg, min(per_sequence, min(i.max_context for i in infos)))
    scheduler = Scheduler(
        SchedulerConfig.from_serving(cfg.serving, max_context),
        {name: r.num_blocks for name, r in replicas.items()},
        block_size,
    )
    metrics = Metrics()
    probe = tokenizer.encode("Hello, world")
    if not probe:
        raise InvalidRequest(
            f"the tokenizer of {version.ref} turns text into no tokens; its tokenizer files are broken "
            "(re-register the model with a working tokenizer.json)"
        )
    supervisor = Supervisor(cfg, plan, pool, specs, probe, artifact_root)
    router = Router(scheduler, replicas, tokenizer, metrics, step_timeout=step_timeout,
                    on_replica_down=supervisor.replica_down)
    supervisor.router = router
    await warm_up(replicas, probe, step_timeout)
    for name in pool.clients:
        metrics.worker_up.labels(name).set(1)

    tasks = [
        asyncio.create_task(router.run(), name="genie-router"),
        asyncio.create_task(supervisor.run(), name="genie-supervisor"),
    ]

    async def cancel_tasks() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    stack.push_async_callback(cancel_tasks)
    model = ServedModel(cfg.model.name, max_context, cfg.serving.default_max_tokens, int(version.created_at.timestamp()))
    state = HttpState(
        router, tokenizer, model, metrics, api_keys=keys, protect_metrics=cfg.serving.protect_metrics,
        max_body_bytes=int(cfg.serving.max_body_mib * (1 << 20)), restarting=supervisor.restarting,
    )
    port = cfg.serving.http_port if http_port is None else http_port
    runner, http_url = await start_http(state, cfg.serving, port)
    stack.push_async_callback(runner.cleanup)
    grpc_address = await _start_grpc(cfg, state, stack, grpc_port)
    return Running(http_url, grpc_address, router, pool, model, supervisor)


async def _start_grpc(cfg: GenieConfig, state: HttpState, stack: AsyncExitStack, port: int | None) -> str | None:
    port = cfg.serving.grpc_port if port is None else port
    if port is None:
        return None
    try:
        from .grpc_server import start_grpc_server
    except ImportError:
        log.warning("the gRPC front door is not available in this build; serving HTTP only")
        return None
    server, bound = await start_grpc_server(state, cfg.serving.host, port, tls=tls_pair(cfg.serving))
    stack.push_async_callback(server.stop, 2.0)
    return f"{cfg.serving.host}:{bound}"


async def serve(cfg: GenieConfig, http_port: int | None = None, grpc_port: int | None = None,
                announce: Callable[[str], None] = print) -> None:
    """Runs until SIGINT/SIGTERM, then drains: no new requests, running ones get `drain_grace_s`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        running = await start(cfg, stack, http_port, grpc_port)
        # Everything built at start (torch, the tokenizer, the plan) lives for the whole run: moving it out of the
        # collector's generations keeps full collections short, so they never stall the event loop for long.
        gc.collect()
        gc.freeze()
        grpc_part = f", gRPC on {running.grpc_address}" if running.grpc_address else ""
        announce(
            f"genie-serve ready in {time.monotonic() - started:.1f}s: {running.model.name} at "
            f"{running.http_url}/v1 (OpenAI-compatible){grpc_part}; metrics at {running.http_url}/metrics"
        )
        await stop.wait()
        log.info("shutting down: taking no new requests, waiting up to %.0fs for running ones",
                 cfg.serving.drain_grace_s)
        running.router.stop_accepting()
        if not await running.router.wait_idle(cfg.serving.drain_grace_s):
            log.warning("requests still running after the %.0f s grace period end with finish_reason abort",
                        cfg.serving.drain_grace_s)
            running.router.abort_all(
                f"genie-serve is shutting down and the drain's grace period ({cfg.serving.drain_grace_s:g} s) is over"
            )
            await running.router.wait_idle(ABORT_FLUSH_S)
    log.info("genie-serve stopped")
