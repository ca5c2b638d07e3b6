"""One genie-serve process: registry -> plans -> workers -> a router or batcher per model -> front doors, and a
graceful drain.

Every background task is created and cancelled here, in one place.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from genie.auth import check_exposure, load_api_keys
from genie.config import GenieConfig
from genie.registry.cluster import cluster_from_config

from .catalog import Catalog
from .generation import ServedModel
from .http import HttpState
from .http_site import start_http
from .launcher import WorkerPool, start_workers
from .metrics import Metrics
from .prepare import prepare_available
from .registry_watch import RegistryWatch, waiting_reason, workers_to_start
from .router import Router
from .start_llm import start_llm
from .start_stateless import start_stateless
from .supervisor import Supervisor
from .tls import tls_pair

log = logging.getLogger("genie.serve")

WORKER_STOP_GRACE_S = 5.0  # workers get SIGTERM at exit and this long before SIGKILL
ABORT_FLUSH_S = 2.0  # after the drain's abort, how long the doors get to send the last events


@dataclass(slots=True)
class Running:
    """What a started server exposes to its caller (the CLI, or tests). router, model and supervisor are the
    first LLM's (None when only stateless models are served); the catalog holds every model."""

    http_url: str
    grpc_address: str | None
    router: Router | None
    pool: WorkerPool
    model: ServedModel | None
    supervisor: Supervisor | None
    catalog: Catalog
    supervisors: list[Supervisor]


async def start(cfg: GenieConfig, stack: AsyncExitStack, http_port: int | None = None,
                grpc_port: int | None = None) -> Running:
    """Starts everything; the stack tears it down in reverse order."""
    keys = load_api_keys(cfg.serving.api_keys_file)
    check_exposure(cfg.serving.host, keys)
    prepared, waiting = await prepare_available(cfg)
    artifact_root = str(cfg.registry.resolve_home())
    workers = workers_to_start(cfg, prepared, waiting)
    pool = await start_workers(cfg, workers, cfg.serving.worker_timeout_s, artifact_root, [p.plan for p in prepared])
    stack.push_async_callback(pool.close, min(cfg.serving.drain_grace_s, WORKER_STOP_GRACE_S))
    metrics = Metrics()
    memory = {w.name: w.memory_bytes for w in cluster_from_config(cfg).workers}
    started = []
    for p in prepared:  # one after the other: the workers' engine threads load one fragment at a time anyway
        if p.is_llm:
            started.append(await start_llm(cfg, p, pool, metrics, artifact_root))
        else:
            worker_memory = min(memory.get(f.worker, 0) for f in p.plan.fragments)
            started.append(await start_stateless(cfg, p, pool, metrics, worker_memory))
    for name in pool.clients:
        metrics.worker_up.labels(name).set(1)
    catalog = Catalog([entry for entry, _ in started], {n: waiting_reason(cfg, why) for n, why in waiting.items()})
    supervisors = [sup for _, sup in started]

    tasks = [asyncio.create_task(e.service.run(), name=f"genie-{e.name}") for e in catalog.entries.values()]
    tasks += [asyncio.create_task(s.run(), name="genie-supervisor") for s in supervisors]
    if catalog.waiting:  # models registered later join the catalog, their tasks join `tasks`
        watch = RegistryWatch(cfg, pool, metrics, catalog, artifact_root, list(prepared), tasks, supervisors)
        tasks.append(asyncio.create_task(watch.run(), name="genie-registry-watch"))

    async def cancel_tasks() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    stack.push_async_callback(cancel_tasks)
    state = HttpState(
        metrics=metrics, api_keys=keys, protect_metrics=cfg.serving.protect_metrics,
        max_body_bytes=int(cfg.serving.max_body_mib * (1 << 20)), catalog=catalog,
        client_programs=cfg.serving.client_programs,
    )
    port = cfg.serving.http_port if http_port is None else http_port
    runner, http_url = await start_http(state, cfg.serving, port)
    stack.push_async_callback(runner.cleanup)
    grpc_address = await _start_grpc(cfg, state, stack, grpc_port)
    first = catalog.llms[0] if catalog.llms else None
    first_sup = supervisors[[e.name for e, _ in started].index(first.name)] if first else None
    return Running(http_url, grpc_address, first.router if first else None, pool, first.model if first else None,
                   first_sup, catalog, supervisors)


async def _start_grpc(cfg: GenieConfig, state: HttpState, stack: AsyncExitStack, port: int | None) -> str | None:
    port = cfg.serving.grpc_port if port is None else port
    if port is None:
        return None
    try:
        from .grpc_server import start_grpc_server
        from .kserve_grpc import kserve_service
    except ImportError:
        log.warning("the gRPC front door is not available in this build; serving HTTP only")
        return None
    server, bound = await start_grpc_server(state, cfg.serving.host, port, tls=tls_pair(cfg.serving),
                                            services=[kserve_service(state)])
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
        names = ", ".join([f"{e.name} ({e.kind})" for e in running.catalog.entries.values()]
                          + [f"{n} (waiting for its registration)" for n in running.catalog.waiting])
        announce(
            f"genie-serve ready in {time.monotonic() - started:.1f}s: {names} at "
            f"{running.http_url}/v1 (OpenAI-compatible) and /v2 (KServe v2){grpc_part}; metrics at "
            f"{running.http_url}/metrics"
        )
        await stop.wait()
        log.info("shutting down: taking no new requests, waiting up to %.0fs for running ones",
                 cfg.serving.drain_grace_s)
        services = [e.service for e in running.catalog.entries.values()]
        for service in services:
            service.stop_accepting()
        idle = await asyncio.gather(*(s.wait_idle(cfg.serving.drain_grace_s) for s in services))
        if not all(idle):
            log.warning("requests still running after the %.0f s grace period end with finish_reason abort",
                        cfg.serving.drain_grace_s)
            for service in services:
                service.abort_all(
                    f"genie-serve is shutting down and the drain's grace period ({cfg.serving.drain_grace_s:g} s) "
                    "is over"
                )
            await asyncio.gather(*(s.wait_idle(ABORT_FLUSH_S) for s in services))
    log.info("genie-serve stopped")
