"""The systems in child processes: genie-serve through HTTP, and the semantic-blind modes on a worker process.

Worker-link traffic is counted from serialized Step messages in both: genie-serve's workers report theirs
(`GET /v1/genie/workers`, read before and after each level); the blind modes' WorkerClient counts its own.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import yaml

from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentSpec
from genie.workers.process import spawn_worker

from .compare_setup import MODEL_NAME, MODEL_SOURCE, Setup
from .options import Endpoint, LoadMode, ServeOptions, Slo
from .rows import BLIND_KV, BLIND_RECOMPUTE, SERVE, Level, Row, fail_all, measure_levels
from .runner import run_level
from .steppers import BlindKVStepper, BlindRecomputeStepper, PinnedStepper
from .streams import run_streams
from .summary import summarize
from .systems_local import streams_row
from .workload import Workload

OnRow = Callable[[Row], None]
START_TIMEOUT_S = 600.0
FRAGMENT = "compare"


def server_config(setup: Setup) -> dict:
    opts = setup.opts
    return {
        "model": {"name": MODEL_NAME, "source": MODEL_SOURCE, "register_if_missing": True, "dtype": setup.dtype_name},
        "registry": {"home": str(opts.registry_home)} if opts.registry_home else {},
        # One worker with every thread: the same compute as the in-process engine and the blind worker.
        "workers": {"launch": 1, "device": "cpu", "threads": opts.threads,
                    "kv_cache_mib": -(-setup.kv_cache_bytes // (1 << 20))},
        "serving": {"http_port": 0, "grpc_port": None, "max_running_requests": max(64, opts.sizes.streams),
                    "worker_timeout_s": opts.timeout_s},
    }


async def worker_traffic(url: str) -> tuple[int, int]:
    """(bytes the router sent to its workers, bytes it received from them) in serialized Step messages."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"{url}/v1/genie/workers") as response:
            response.raise_for_status()
            workers = (await response.json())["data"]
    broken = [w for w in workers if "error" in w]
    if broken:
        raise RuntimeError(f"worker {broken[0]['name']} did not report its traffic: {broken[0]['error']}")
    return sum(w["bytes_received"] for w in workers), sum(w["bytes_sent"] for w in workers)


def _serve_options(setup: Setup, url: str, work: Workload) -> ServeOptions:
    opts = setup.opts
    return ServeOptions(
        url=url, model=MODEL_NAME, label="genie-serve", endpoint=Endpoint.CHAT, mode=LoadMode.CONCURRENCY,
        levels=(), num_prompts=len(work), output_len=work.output_len, input_len=opts.input_len, prompts_file=None,
        ignore_eos=work.ignore_eos, temperature=0.0, slo=Slo(), max_concurrency=None, seed=opts.seed,
        timeout_s=opts.timeout_s, output_dir=opts.output_dir, plot=False, progress=False,
    )


async def _http_row(setup: Setup, url: str, level: Level) -> Row:
    work = level.work
    before = await worker_traffic(url)
    run = await run_level(_serve_options(setup, url, work), level.streams, list(work.prompts), asyncio.Event())
    after = await worker_traffic(url)
    summary = summarize(run.records, run.duration_s, Slo())
    return Row(
        SERVE, level.setting, level.streams, len(work), summary.output_tokens, run.duration_s,
        ttft_p50_ms=summary.ttft.p50_ms if summary.ttft else None,
        tpot_p50_ms=summary.tpot.p50_ms if summary.tpot else None,
        link_bytes_sent=after[0] - before[0], link_bytes_received=after[1] - before[1],
        errors=summary.errors, error=summary.error_messages[0].message if summary.error_messages else None,
    )


async def _start_server(setup: Setup, stack: AsyncExitStack) -> str:
    """Starts genie-serve (stopped when `stack` closes), sends one warm-up request; returns its URL."""
    from genie.serving.process import spawn_server

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="genie-compare-")))
    path = tmp / "genie.yaml"
    path.write_text(yaml.safe_dump(server_config(setup)))
    server = await asyncio.to_thread(spawn_server, path, START_TIMEOUT_S)
    stack.push_async_callback(asyncio.to_thread, server.stop, 30.0)
    warmup = await _http_row(setup, server.url, Level.streaming(SERVE, 1, setup.work.warmup()))
    if not warmup.ok:
        raise RuntimeError(f"the warm-up request failed: {warmup.error}")
    return server.url


async def serve_rows(setup: Setup, on_row: OnRow) -> None:
    levels = [Level.streaming(SERVE, 1, setup.serial), Level.streaming(SERVE, setup.opts.sizes.streams, setup.work)]
    async with AsyncExitStack() as stack:
        try:
            url = await _start_server(setup, stack)
        except Exception as err:
            fail_all(levels, err, on_row)
            return
        await measure_levels(levels, lambda level: _http_row(setup, url, level), on_row)


async def _blind_row(client: WorkerClient, level: Level) -> Row:
    stepper = BlindKVStepper(client, FRAGMENT) if level.system == BLIND_KV else BlindRecomputeStepper(client, FRAGMENT)
    sent, received = client.step_bytes_sent, client.step_bytes_received
    run = await run_streams(stepper, level.work, level.streams, f"{level.system}{level.streams}")
    return streams_row(level, run, (client.step_bytes_sent - sent, client.step_bytes_received - received))


async def _start_worker(setup: Setup, stack: AsyncExitStack) -> WorkerClient:
    """Starts a worker process with the model loaded (stopped when `stack` closes) and warms it up."""
    worker = await asyncio.to_thread(spawn_worker, "cpu", setup.opts.threads, None, START_TIMEOUT_S)
    stack.push_async_callback(asyncio.to_thread, worker.stop, 10.0)
    client = WorkerClient(worker.address, timeout=setup.opts.timeout_s, token=worker.token)
    await stack.enter_async_context(client)
    spec = FragmentSpec(FRAGMENT, str(setup.model_dir), dtype=setup.dtype_name, kv_cache_bytes=setup.kv_cache_bytes)
    await client.load_fragment(spec)
    await run_streams(PinnedStepper.on_worker(client, FRAGMENT), setup.work.warmup(), 1, "warmup")
    return client


async def blind_rows(setup: Setup, on_row: OnRow) -> None:
    sizes = setup.opts.sizes
    levels = [
        Level.streaming(BLIND_KV, 1, setup.serial),
        Level.streaming(BLIND_KV, sizes.streams, setup.work),
        Level.streaming(BLIND_RECOMPUTE, 1, setup.serial),
        Level.streaming(BLIND_RECOMPUTE, sizes.recompute_streams, setup.recompute),
    ]
    async with AsyncExitStack() as stack:
        try:
            client = await _start_worker(setup, stack)
        except Exception as err:
            fail_all(levels, err, on_row)
            return
        await measure_levels(levels, lambda level: _blind_row(client, level), on_row)
