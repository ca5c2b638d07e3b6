"""The worker's gRPC service: thin handlers over loaded fragments, errors mapped to a status in one place.

Engine work (load, step, release, unload) runs on one dedicated thread, so steps are serialized and the
event loop stays free to answer Health, Info and Stats while a step runs. Every call passes the link guard
(workers/link.py) first, and every load passes the artifact guard (workers/artifacts.py).

Status messages speak only of the call that failed: the sequences it named and the loaded fragment ids, never
another caller's sequences or an internal exception's text.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import torch

import genie
from genie.auth import KeySet
from genie.errors import (AlreadyExists, ConfigError, GenieError, InvalidRequest, NotFound, ResourceExhausted,
                          Unavailable)
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers import codec
from genie.workers.artifacts import ArtifactGuard
from genie.workers.blind import is_blind
from genie.workers.contract import LLM, STATELESS, FragmentSpec, SeqResult, SeqStep
from genie.workers.device import DeviceFacts, memory_bytes
from genie.workers.client import WorkerClient
from genie.workers.handoff import Handoff, check_send, export_for_handoff, failed, receive_kv
from genie.workers.link import LinkGuard
from genie.workers.status import map_errors, status_of
from genie.workers.step_stream import answer_stream
from genie.workers.programs import ProgramHost
from genie.workers.programs.limits import ProgramLimits

if TYPE_CHECKING:
    from genie.workers.engine import Fragment
    from genie.workers.stateless import StatelessFragment

log = logging.getLogger("genie.worker")

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
    # Without this, two workers could bind the same port and share its traffic.
    ("grpc.so_reuseport", 0),
]

MAX_KV_SHARE_OF_FREE = 0.8  # weights and activations need the rest

Loader = Callable[[FragmentSpec, torch.device], "Fragment"]
StatelessLoader = Callable[[FragmentSpec, torch.device], "StatelessFragment"]
T = TypeVar("T")


def _default_loader(spec: FragmentSpec, device: torch.device) -> Fragment:
    from genie.workers.engine import load_fragment

    return load_fragment(spec, device)


def _default_stateless_loader(spec: FragmentSpec, device: torch.device) -> StatelessFragment:
    from genie.workers.stateless import load_stateless

    return load_stateless(spec, device)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        device: torch.device,
        facts: DeviceFacts,
        loader: Loader = _default_loader,
        default_kv_bytes: int | None = None,
        engine: ThreadPoolExecutor | None = None,
        artifacts: ArtifactGuard | None = None,
        stateless_loader: StatelessLoader = _default_stateless_loader,
        peer_token: str | None = None,
        program_limits: ProgramLimits | None = None,
    ) -> None:
        """peer_token: the link credential this worker presents to the other workers of its pool (KV handoff);
        program_limits: what one client's genie.client programs may take here (None: the defaults)."""
        self._device = device
        self._facts = facts
        self._loaders: dict[str, Callable[[FragmentSpec, torch.device], Any]] = {
            LLM: loader,
            STATELESS: stateless_loader,
        }
        self._default_kv_bytes = default_kv_bytes
        self._engine = engine or engine_thread()
        self._artifacts = artifacts or ArtifactGuard()
        self._fragments: dict[str, Fragment | StatelessFragment] = {}
        self._loading: set[str] = set()
        self.stopping = False
        self.steps = 0
        self.tokens = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.handoff_bytes_sent = 0
        self.handoff_bytes_received = 0
        self.fragments_loaded = 0
        self._requested: dict[str, FragmentSpec] = {}  # fragment id -> the spec it was loaded from, as asked
        self._peer_token = peer_token
        self._peers: dict[str, WorkerClient] = {}  # address -> client, for KV handoffs
        self._programs = ProgramHost(device, limits=program_limits)  # genie.client programs (workers/programs)

    async def _on_engine(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs engine work on the single engine thread, one call at a time, in arrival order."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._engine, functools.partial(_no_grad, fn, *args))

    def _engine_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queues engine work in arrival order like `_on_engine`, without waiting for it; a failure is logged."""
        future = asyncio.get_running_loop().run_in_executor(self._engine, functools.partial(_no_grad, fn, *args))

        def report(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("engine work %s failed: %s", getattr(fn, "__name__", fn), done.exception())

        future.add_done_callback(report)

    def _fragment(self, fragment_id: str) -> Fragment | StatelessFragment:
        fragment = self._fragments.get(fragment_id)
        if fragment is None and fragment_id in self._loading:
            raise NotFound(f"fragment {fragment_id!r} is still loading; wait for its LoadFragment to finish")
        if fragment is None:
            loaded = ", ".join(sorted(self._fragments)) or "none"
            raise NotFound(
                f"no fragment {fragment_id!r} on this worker (loaded: {loaded}); load it with LoadFragment first"
            )
        return fragment

    def _fragment_of_kind(self, fragment_id: str, kind: str, rpc: str) -> Any:
        fragment = self._fragment(fragment_id)
        if fragment.info.kind != kind:
            use = "Infer" if fragment.info.kind == STATELESS else "Step and Release"
            raise InvalidRequest(
                f"fragment {fragment_id!r} is {fragment.info.kind}; {rpc} serves {kind} fragments, use {use}"
            )
        return fragment

    def _load(self, spec: FragmentSpec) -> Fragment | StatelessFragment:
        spec = self._artifacts.check(spec)  # on the engine thread: it may hash gigabytes
        if spec.kind == STATELESS:  # no KV cache to budget
            return self._loaders[STATELESS](spec, self._device)
        # The KV cache is zero-filled at load; on Linux an over-large one gets the process OOM-killed rather
        # than raising, so refuse it while there is still a process to answer.
        _, free = memory_bytes(self._device)
        if spec.kv_cache_bytes > MAX_KV_SHARE_OF_FREE * free:
            raise ResourceExhausted(
                f"fragment {spec.fragment_id!r}: kv_cache_bytes={spec.kv_cache_bytes} is more than "
                f"{MAX_KV_SHARE_OF_FREE:.0%} of the {free} bytes free on {self._device}; lower kv_cache_bytes"
            )
        return self._loaders[LLM](spec, self._device)

    def close(self) -> None:
        self._engine.shutdown(wait=False, cancel_futures=True)
        self._fragments.clear()
        self._peers.clear()  # their channels close with the event loop

    @map_errors
    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        if self.stopping:
            return pb.HealthResponse(serving=False, status="stopping")
        return pb.HealthResponse(serving=True, status="ok")

    @map_errors
    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        facts = self._facts
        total, free = memory_bytes(self._device)
        info = codec.WorkerInfo(
            device=facts.device,
            device_name=facts.name,
            memory_total_bytes=total,
            memory_free_bytes=free,
            bandwidth_gbps=facts.bandwidth_gbps,
            tflops=facts.tflops,
            capabilities=facts.capabilities,
            fragments=tuple(sorted(self._fragments)),
            version=genie.__version__,
            op_us=facts.op_us,
            module_us=facts.module_us,
            call_us=facts.call_us,
        )
        return codec.worker_info_to_pb(info)

    @map_errors
    async def LoadFragment(
        self, request: pb.LoadFragmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadFragmentResponse:
        spec = codec.spec_from_pb(request, self._default_kv_bytes)
        held = self._fragments.get(spec.fragment_id)
        if request.reuse_loaded and held is not None and self._requested.get(spec.fragment_id) == spec:
            log.info("reusing fragment %s, loaded before from the same request", spec.fragment_id)
            return codec.fragment_info_to_pb(held.info)
        if spec.fragment_id in self._fragments or spec.fragment_id in self._loading:
            raise AlreadyExists(
                f"fragment {spec.fragment_id!r} is already loaded on this worker; unload it first or use another id"
            )
        self._loading.add(spec.fragment_id)
        try:
            started = time.perf_counter()
            fragment = await self._on_engine(self._load, spec)
        finally:
            self._loading.discard(spec.fragment_id)
        self._fragments[spec.fragment_id] = fragment
        self._requested[spec.fragment_id] = spec
        self.fragments_loaded += 1
        info = fragment.info
        if info.kind == STATELESS:
            log.info(
                "loaded stateless fragment %s from %s: inputs %s, outputs %s, %s, %.1f s",
                spec.fragment_id, spec.model_dir, [t.name for t in info.inputs], [t.name for t in info.outputs],
                info.dtype, time.perf_counter() - started,
            )
        else:
            log.info(
                "loaded fragment %s from %s: %d layers, %d KV blocks of %d tokens, %s, %.1f s",
                spec.fragment_id, spec.model_dir, info.num_layers, info.num_kv_blocks, info.block_size,
                info.dtype, time.perf_counter() - started,
            )
        return codec.fragment_info_to_pb(info)

    @map_errors
    async def UnloadFragment(
        self, request: pb.UnloadFragmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadFragmentResponse:
        self._fragment(request.fragment_id)
        self._fragments.pop(request.fragment_id)
        self._requested.pop(request.fragment_id, None)
        # Queued behind any step still holding the fragment, then the memory goes back.
        await self._on_engine(_free_memory, self._device)
        log.info("unloaded fragment %s", request.fragment_id)
        return pb.UnloadFragmentResponse()

    @map_errors
    async def Step(self, request: pb.StepRequest, context: grpc.aio.ServicerContext) -> pb.StepResponse:
        return await self._step(request)

    async def StepStream(self, requests: AsyncIterator[pb.StepStreamRequest], context: grpc.aio.ServicerContext) -> None:
        """Answers each step of the stream as it finishes (the engine thread keeps arrival order); a failed step
        is answered with its status, and the stream runs on."""
        await answer_stream(requests, context, self._step_answer)

    async def _step_answer(self, message: pb.StepStreamRequest) -> pb.StepStreamResponse:
        answer = pb.StepStreamResponse(id=message.id)
        try:
            await self._step(message.step, answer.step)  # filled in place: no copy of the results
        except Exception as exc:
            code, text = status_of(exc, "Step")
            answer.error.code, answer.error.message = code.name, text  # the oneof drops the half-filled step
        return answer

    async def _step(self, request: pb.StepRequest, into: pb.StepResponse | None = None) -> pb.StepResponse:
        """Runs one Step; the results go into `into` (a fresh StepResponse when None), which is returned."""
        self.bytes_received += request.ByteSize()
        fragment = self._fragment_of_kind(request.fragment_id, LLM, "Step")
        response = pb.StepResponse() if into is None else into
        tokens = await self._on_engine(_step, fragment, request, response)
        self.steps += 1
        self.tokens += tokens
        self.bytes_sent += response.ByteSize()
        return response

    @map_errors
    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        fragment = self._fragment_of_kind(request.fragment_id, LLM, "Release")
        if request.all_sequences:
            released, evicted = await self._on_engine(fragment.release_all)
        else:
            released, evicted = await self._on_engine(_release, fragment, list(request.seq_ids), list(request.evict))
        return pb.ReleaseResponse(released=released, evicted=evicted)

    @map_errors
    async def Infer(self, request: pb.InferRequest, context: grpc.aio.ServicerContext) -> pb.InferResponse:
        self.bytes_received += request.ByteSize()
        fragment = self._fragment_of_kind(request.fragment_id, STATELESS, "Infer")
        response = await self._on_engine(_infer, fragment, request)
        self.steps += 1
        self.bytes_sent += response.ByteSize()
        return response

    @map_errors
    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        # Read on the event loop, not the engine thread, so Stats answers while a step runs.
        stats = codec.WorkerStats(
            fragments=tuple(fragment.stats() for fragment in list(self._fragments.values())),
            steps=self.steps,
            tokens=self.tokens,
            bytes_received=self.bytes_received,
            bytes_sent=self.bytes_sent,
            handoff_bytes_sent=self.handoff_bytes_sent,
            handoff_bytes_received=self.handoff_bytes_received,
            fragments_loaded=self.fragments_loaded,
        )
        return codec.worker_stats_to_pb(stats)

    @map_errors
    async def SendKV(self, request: pb.SendKVRequest, context: grpc.aio.ServicerContext) -> pb.SendKVResponse:
        fragment = self._fragment_of_kind(request.fragment_id, LLM, "SendKV")
        check_send(request.seq_id, request.target, request.lease_s, request.skip_tokens)
        started = time.perf_counter()
        kv = await self._on_engine(export_for_handoff, fragment, request.seq_id, request.skip_tokens,
                                   len(request.cached_prefix))
        tokens, nbytes = int(kv.shape[2]), 0
        try:
            peer = self._peers.get(request.target)
            if peer is None:
                peer = self._peers[request.target] = WorkerClient(request.target, token=self._peer_token)
            left = request.lease_s - (time.perf_counter() - started)
            nbytes = await peer.import_kv(request.target_fragment_id, request.seq_id, kv, timeout=max(left, 1e-3),
                                          prefix=tuple(request.cached_prefix),
                                          new_hashes=tuple(request.new_block_hashes))
            self.handoff_bytes_sent += nbytes
            result = Handoff(True, "", tokens, nbytes, time.perf_counter() - started)
        except GenieError as exc:
            result = failed(exc, tokens, nbytes, started)
            log.warning("KV handoff of %s to %s failed after %.2f s: %s", request.seq_id, request.target,
                        result.seconds, result.error)
        finally:  # acknowledged, refused or out of lease: this copy is freed either way, queued on the engine
            # thread now, so before any step the router sends next, but not awaited: the answer need not wait
            # behind a long prefill step in flight here, which would hold the decode side up
            self._engine_soon(fragment.release, [request.seq_id])
        return pb.SendKVResponse(delivered=result.delivered, error=result.error, tokens=result.tokens,
                                 bytes=result.bytes, seconds=result.seconds)

    @map_errors
    async def ImportKV(self, request: pb.ImportKVRequest, context: grpc.aio.ServicerContext) -> pb.ImportKVResponse:
        fragment = self._fragment_of_kind(request.fragment_id, LLM, "ImportKV")
        kv = codec.tensor_from_pb(request.kv, f"kv of sequence {request.seq_id!r}")
        left = context.time_remaining()
        if left is not None and left <= 0:  # the sender gave up already: importing would only leak the KV
            raise Unavailable(f"the KV of sequence {request.seq_id!r} arrived after its lease ran out; dropped it")
        tokens = await self._on_engine(receive_kv, fragment, request.seq_id, kv, tuple(request.cached_prefix),
                                       tuple(request.new_block_hashes))
        left = context.time_remaining()
        if left is not None and left <= 0:  # the sender's lease ran out meanwhile: it counts this as not delivered
            await self._on_engine(fragment.release, [request.seq_id])
            raise Unavailable(f"the KV of sequence {request.seq_id!r} arrived after its lease ran out; dropped it")
        self.handoff_bytes_received += request.ByteSize()
        return pb.ImportKVResponse(tokens=tokens)

    @map_errors
    async def LoadProgram(
        self, request: pb.LoadProgramRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadProgramResponse:
        return await self._on_engine(self._programs.load, request)

    @map_errors
    async def BindWeights(
        self, request: pb.BindWeightsRequest, context: grpc.aio.ServicerContext
    ) -> pb.BindWeightsResponse:
        return await self._on_engine(self._programs.bind, request)

    @map_errors
    async def RunProgram(
        self, request: pb.RunProgramRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunProgramResponse:
        return await self._on_engine(self._programs.run, request)

    @map_errors
    async def ProgramStats(
        self, request: pb.ProgramStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProgramStatsResponse:
        return self._programs.stats(request)


def engine_thread(threads: int | None = None) -> ThreadPoolExecutor:
    """The one thread that runs every torch op of a worker, with `threads` intra-op threads.

    Keep all torch work on it, the startup probe included: each thread that runs parallel ops gets its own
    OpenMP team, and once a process has more OpenMP threads than CPUs, libgomp stops spin-waiting between
    parallel regions. On 2 CPUs a SmolLM2 decode step took 18.1 ms that way against 12.3 ms with one team.
    """
    initializer = (lambda: torch.set_num_threads(threads)) if threads else None
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="genie-engine", initializer=initializer)


def _no_grad(fn: Callable[..., T], *args: Any) -> T:
    with torch.no_grad():
        return fn(*args)


def _step(fragment: Fragment, request: pb.StepRequest, response: pb.StepResponse) -> int:
    """Decodes, steps and encodes into `response` on the engine thread; returns the tokens it processed."""
    seqs = [codec.seq_step_from_pb(msg) for msg in request.seqs]
    started = time.perf_counter()
    results = _run_step(fragment, seqs)
    response.compute_seconds = time.perf_counter() - started
    response.results.extend([codec.seq_result_to_pb(r) for r in results])
    return sum(seq.num_tokens for seq in seqs)


def _infer(fragment: StatelessFragment, request: pb.InferRequest) -> pb.InferResponse:
    """Decodes, runs and encodes one Infer on the engine thread."""
    inputs = codec.named_tensors_from_pb(request.inputs, "input")
    outputs = fragment.run(inputs)
    response = pb.InferResponse(compute_seconds=fragment.last_compute_s)
    codec.named_tensors_to_pb(outputs, response.outputs)
    return response


def _run_step(fragment: Fragment, seqs: list[SeqStep]) -> list[SeqResult]:
    if not any(is_blind(seq) for seq in seqs):
        return fragment.step(seqs)
    # Only genie-bench compare's semantic-blind baseline sends KV; the engine module loads on first use.
    from genie.workers.engine.kv_io import step_with_kv

    return step_with_kv(fragment, seqs)


def _release(fragment: Fragment, seq_ids: list[str], evict: list[bytes]) -> tuple[int, int]:
    """Sequences first: the blocks they held may be among those to evict."""
    return fragment.release(seq_ids), fragment.evict(evict) if evict else 0


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


async def start_server(
    servicer: WorkerServicer, listen: str, *, link_keys: KeySet
) -> tuple[grpc.aio.Server, int]:
    """Binds `listen` (HOST:PORT, port 0 picks a free one) and starts serving; returns the server and port.

    Every call must carry one of `link_keys`; an empty KeySet lets any caller in (`--insecure-no-auth`)."""
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[LinkGuard(link_keys)])
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc}; is the port in use?") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {listen}; is the port in use?")
    await server.start()
    return server, port
