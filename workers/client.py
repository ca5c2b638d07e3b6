"""`WorkerClient`: an async client of one worker over one grpc.aio channel, speaking engine dataclasses.

gRPC statuses come back as genie.errors, so callers handle one family of exceptions whether the worker is
local or remote. Create and use a client inside one running event loop. With a `token`, every call carries
the link credential (`authorization: Bearer TOKEN`); a worker that refuses it raises LinkRefused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from genie.auth import link_metadata
from genie.errors import AlreadyExists, GenieError, InvalidRequest, NotFound, ResourceExhausted, Unavailable
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers import codec
from genie.workers.codec import WorkerInfo, WorkerStats
from genie.workers.contract import FragmentInfo, FragmentSpec, SeqResult, SeqStep
from genie.workers.step_stream import StepStream

if TYPE_CHECKING:
    import torch

# grpc.aio channels with ~2000 calls in flight get GOAWAY from the server; stay well below.
DEFAULT_MAX_IN_FLIGHT = 256
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", codec.MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", codec.MAX_MESSAGE_BYTES),
]


class WorkerInternalError(GenieError):
    """The worker failed in a way the caller did not cause; its log has the details."""

    http_status = 500
    grpc_code = "INTERNAL"


class LinkRefused(GenieError):
    """The worker is up but refused this client's link credential: a configuration error, not a dead worker."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


_BY_STATUS: dict[grpc.StatusCode, type[GenieError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def error_from_status(code: grpc.StatusCode, details: str | None, address: str, rpc: str) -> GenieError:
    details = details or code.name
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return LinkRefused(
            f"the worker at {address} refused the link credential in {rpc}: {details}; give the client the "
            "token the worker was started with"
        )
    if code in _UNREACHABLE:
        return Unavailable(f"worker at {address} did not answer {rpc} ({code.name}: {details})")
    error_type = _BY_STATUS.get(code)
    if error_type is None:
        return WorkerInternalError(f"worker at {address} failed in {rpc} ({code.name}): {details}")
    return error_type(details)


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    serving: bool
    status: str  # "ok", or why not


class WorkerClient:
    """One channel to one worker, at most `max_in_flight` calls at a time, each carrying `token` if given.

    `timeout` (seconds, None for no deadline) applies to every call that does not pass its own. Steps travel
    on one long-lived StepStream call (workers/step_stream.py), reopened when it breaks; with
    `step_stream=False` each step is a unary Step call.
    Traffic counters: `step_bytes_sent` / `step_bytes_received` add up the serialized Step requests and
    responses; `last_step_bytes` is (request, response) bytes of the latest step.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        token: str | None = None,
        step_stream: bool = True,
    ) -> None:
        self.address = address
        self.step_stream = step_stream
        self._stream: StepStream | None = None
        self.timeout = timeout
        self._max_in_flight = max_in_flight
        self._metadata = link_metadata(token) if token else None  # None: a worker started --insecure-no-auth
        self._channel: grpc.aio.Channel | None = None
        self._stub: worker_pb2_grpc.WorkerStub | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self.steps = 0
        self.step_bytes_sent = 0
        self.step_bytes_received = 0
        self.last_step_bytes = (0, 0)
        self.last_step_compute_s = 0.0  # the worker's own time inside the engine
        self.last_infer_compute_s = 0.0

    async def health(self, timeout: float | None = None) -> WorkerHealth:
        response = await self._call("Health", pb.HealthRequest(), timeout)
        return WorkerHealth(serving=response.serving, status=response.status)

    async def info(self, timeout: float | None = None) -> WorkerInfo:
        return codec.worker_info_from_pb(await self._call("Info", pb.InfoRequest(), timeout))

    async def load_fragment(
        self, spec: FragmentSpec, timeout: float | None = None, reuse: bool = False
    ) -> FragmentInfo:
        """With `reuse`, a fragment the worker loaded before from this same spec is answered, not loaded again."""
        request = codec.spec_to_pb(spec)
        request.reuse_loaded = reuse
        return codec.fragment_info_from_pb(await self._call("LoadFragment", request, timeout))

    async def unload_fragment(self, fragment_id: str, timeout: float | None = None) -> None:
        await self._call("UnloadFragment", pb.UnloadFragmentRequest(fragment_id=fragment_id), timeout)

    async def step(self, fragment_id: str, seqs: Sequence[SeqStep], timeout: float | None = None) -> list[SeqResult]:
        request = pb.StepRequest(fragment_id=fragment_id, seqs=[codec.seq_step_to_pb(s) for s in seqs])
        if self.step_stream:
            response = await self._stream_step(request, timeout)
        else:
            response = await self._call("Step", request, timeout)
        self.last_step_bytes = (request.ByteSize(), response.ByteSize())
        self.steps += 1
        self.step_bytes_sent += self.last_step_bytes[0]
        self.step_bytes_received += self.last_step_bytes[1]
        self.last_step_compute_s = response.compute_seconds
        return [codec.seq_result_from_pb(r) for r in response.results]

    async def release(
        self, fragment_id: str, seq_ids: Sequence[str], timeout: float | None = None, evict: Sequence[bytes] = ()
    ) -> int:
        """Frees the sequences' KV, then evicts the named cached blocks; returns how many sequences were known."""
        request = pb.ReleaseRequest(fragment_id=fragment_id, seq_ids=list(seq_ids), evict=list(evict))
        return (await self._call("Release", request, timeout)).released

    async def release_all(self, fragment_id: str, timeout: float | None = None) -> int:
        """Frees every sequence and cached KV block of the fragment, whoever made them; returns the sequences."""
        request = pb.ReleaseRequest(fragment_id=fragment_id, all_sequences=True)
        return (await self._call("Release", request, timeout)).released

    async def infer(
        self, fragment_id: str, inputs: dict[str, torch.Tensor], timeout: float | None = None
    ) -> dict[str, torch.Tensor]:
        """One batched forward of a stateless fragment: inputs by name ([batch, ...]) -> outputs by name (CPU)."""
        request = pb.InferRequest(fragment_id=fragment_id)
        codec.named_tensors_to_pb(inputs, request.inputs)
        response = await self._call("Infer", request, timeout)
        self.last_infer_compute_s = response.compute_seconds
        return codec.named_tensors_from_pb(response.outputs, f"output of fragment {fragment_id!r}")

    async def send_kv(self, fragment_id: str, seq_id: str, target: str, target_fragment_id: str, lease_s: float,
                      timeout: float | None = None, skip_tokens: int = 0, prefix: tuple[bytes, ...] = (),
                      new_hashes: tuple[bytes, ...] = ()) -> pb.SendKVResponse:
        """Has this worker hand `seq_id`'s KV to the worker at `target` and free it here (see workers/handoff.py):
        all of it but the first `skip_tokens`, which the target holds cached as the blocks `prefix`; the target
        names the full blocks it imports `new_hashes`. A failed handoff is an answer (delivered False, with the
        error), not an exception."""
        request = pb.SendKVRequest(fragment_id=fragment_id, seq_id=seq_id, target=target,
                                   target_fragment_id=target_fragment_id, lease_s=lease_s, skip_tokens=skip_tokens,
                                   cached_prefix=prefix, new_block_hashes=new_hashes)
        return await self._call("SendKV", request, lease_s + 30.0 if timeout is None else timeout)

    async def import_kv(self, fragment_id: str, seq_id: str, kv: torch.Tensor, timeout: float | None = None,
                        prefix: tuple[bytes, ...] = (), new_hashes: tuple[bytes, ...] = ()) -> int:
        """Starts `seq_id` on this worker from its cached blocks `prefix` (none by default) followed by `kv`
        [layers, 2, tokens, kv_heads, head_dim], naming the full blocks kv fills; returns the bytes sent."""
        request = pb.ImportKVRequest(fragment_id=fragment_id, seq_id=seq_id, kv=codec.tensor_to_pb(kv),
                                     cached_prefix=prefix, new_block_hashes=new_hashes)
        await self._call("ImportKV", request, timeout)
        return request.ByteSize()

    async def stats(self, timeout: float | None = None) -> WorkerStats:
        return codec.worker_stats_from_pb(await self._call("Stats", pb.StatsRequest(), timeout))

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connect(self) -> tuple[worker_pb2_grpc.WorkerStub, asyncio.Semaphore]:
        if self._closed:
            raise Unavailable(f"the client of worker {self.address} is closed")
        if self._stub is None or self._slots is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            self._stub = worker_pb2_grpc.WorkerStub(self._channel)
            self._slots = asyncio.Semaphore(self._max_in_flight)
        return self._stub, self._slots

    async def _stream_step(self, request: pb.StepRequest, timeout: float | None) -> pb.StepResponse:
        """One step on the link's StepStream, opened on first use and again after it broke; in-flight steps
        share the channel's `max_in_flight` slots with the unary calls."""
        stub, slots = self._connect()
        async with slots:
            if self._stream is None or self._stream.broken is not None:
                self._stream = StepStream(stub, self._metadata, self.address, error_from_status)
            return await self._stream.step(request, self.timeout if timeout is None else timeout)

    async def _call(self, rpc: str, request: Any, timeout: float | None) -> Any:
        stub, slots = self._connect()
        async with slots:
            try:
                deadline = self.timeout if timeout is None else timeout
                return await getattr(stub, rpc)(request, timeout=deadline, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                raise error_from_status(exc.code(), exc.details(), self.address, rpc) from None

    # Programs (genie.client; genie-serve relays them in serving/programs.py). They speak worker.proto
    # messages, not dataclasses: the relay passes the client's own protobuf through unchanged.
    async def load_program(self, request: pb.LoadProgramRequest,
                           timeout: float | None = None) -> pb.LoadProgramResponse:
        return await self._call("LoadProgram", request, timeout)

    async def bind_weights(self, request: pb.BindWeightsRequest,
                           timeout: float | None = None) -> pb.BindWeightsResponse:
        return await self._call("BindWeights", request, timeout)

    async def run_program(self, request: pb.RunProgramRequest,
                          timeout: float | None = None) -> pb.RunProgramResponse:
        return await self._call("RunProgram", request, timeout)

    async def program_stats(self, request: pb.ProgramStatsRequest,
                            timeout: float | None = None) -> pb.ProgramStatsResponse:
        return await self._call("ProgramStats", request, timeout)

    async def program_rpc(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        """One of the four program RPCs by its worker.proto name."""
        method = {"LoadProgram": self.load_program, "BindWeights": self.bind_weights,
                  "RunProgram": self.run_program, "ProgramStats": self.program_stats}.get(rpc)
        if method is None:
            raise InvalidRequest(f"no program RPC {rpc[:40]!r}; use LoadProgram, BindWeights, RunProgram or "
                                 "ProgramStats")
        return await method(request, timeout)
