"""The Step stream (workers/step_stream.py) over real gRPC on 127.0.0.1 against the real servicer, with a fake
engine fragment: the same answers and typed errors as the unary Step, many steps in flight on one stream, the
link check at the stream's start, and recovery when the stream breaks."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
import torch

from genie.auth import KeySet, link_metadata
from genie.errors import GenieError, NotFound, Unavailable
from genie.protos import worker_pb2 as pb
from genie.workers.client import LinkRefused, WorkerClient, WorkerInternalError
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats, SeqResult, SeqStep
from genie.workers.device import DeviceFacts
from genie.workers.server import WorkerServicer, start_server

TOKEN = "stream-link-token"
FACTS = DeviceFacts("cpu", "test cpu", 1 << 34, 1 << 33, 10.0, 0.1, "float32", ("llm.decoder", "paged_kv"))
STREAM = "/genie.worker.Worker/StepStream"


class Fake:
    """Next token = last token + 1; `gate`, when set, holds every step until it opens."""

    def __init__(self, spec: FragmentSpec) -> None:
        self.info = FragmentInfo(spec.fragment_id, 2, 8, 4, 1024, 8, 100, 64, "float32")
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def step(self, seqs: list[SeqStep]) -> list[SeqResult]:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        for seq in seqs:
            if seq.position > 0:
                raise NotFound(f"unknown sequence {seq.seq_id!r}")
            if seq.seq_id == "boom":
                raise RuntimeError("fake engine bug")
        return [SeqResult(s.seq_id, token_id=s.token_ids[-1] + 1) for s in seqs]

    def release(self, seq_ids: list[str]) -> int:
        return 0

    def stats(self) -> FragmentStats:
        return FragmentStats(self.info.fragment_id, 8, 0, 8, 0, 4)


async def serve(port: int = 0) -> tuple[grpc.aio.Server, int, dict[str, Fake]]:
    loaded: dict[str, Fake] = {}

    def loader(spec: FragmentSpec, device: torch.device) -> Fake:
        loaded[spec.fragment_id] = Fake(spec)
        return loaded[spec.fragment_id]

    servicer = WorkerServicer(torch.device("cpu"), FACTS, loader=loader, default_kv_bytes=1 << 20)
    server, port = await start_server(servicer, f"127.0.0.1:{port}", link_keys=KeySet([TOKEN]))
    async with WorkerClient(f"127.0.0.1:{port}", timeout=30, token=TOKEN) as loading:
        for attempt in range(50):  # a port that refused connections before is retried after a back-off
            try:
                await loading.load_fragment(FragmentSpec("f", "/models/fake"))
                break
            except Unavailable:
                await asyncio.sleep(0.2)
    return server, port, loaded


@pytest.fixture
async def worker():
    server, port, loaded = await serve()
    client = WorkerClient(f"127.0.0.1:{port}", timeout=30, token=TOKEN)
    yield client, loaded, server
    await client.close()
    await server.stop(None)


def prefill(seq_id: str, token: int) -> SeqStep:
    return SeqStep(seq_id, 0, token_ids=[token], sample=True)


async def failure(client: WorkerClient, seqs: list[SeqStep]) -> tuple[type, str]:
    with pytest.raises(GenieError) as caught:
        await client.step("f", seqs)
    return type(caught.value), str(caught.value)


async def test_the_stream_answers_and_fails_exactly_as_the_unary_step(worker) -> None:
    client, _, _ = worker
    async with WorkerClient(client.address, timeout=30, token=TOKEN, step_stream=False) as unary:
        assert await client.step("f", [prefill("a", 1), prefill("b", 7)]) == await unary.step(
            "f", [prefill("a", 1), prefill("b", 7)])
        for bad in ([SeqStep("ghost", 3, token_ids=[1])], [prefill("boom", 1)],
                    [SeqStep("h", 0, hidden=torch.zeros(2, 8, dtype=torch.bfloat16))]):
            assert await failure(client, bad) == await failure(unary, bad)
    assert (await failure(client, [prefill("boom", 1)]))[0] is WorkerInternalError
    with pytest.raises(NotFound, match="no fragment 'nope'"):
        await client.step("nope", [prefill("a", 1)])
    stream = client._stream
    assert stream is not None and stream.broken is None  # the failed steps were answered in-band
    assert (await client.step("f", [prefill("c", 41)]))[0].token_id == 42
    assert client._stream is stream


async def test_thousands_of_steps_in_flight_share_one_stream(worker) -> None:
    client, _, _ = worker
    await client.step("f", [prefill("first", 0)])
    stream = client._stream
    results = await asyncio.gather(*(client.step("f", [prefill(f"s{i}", i)]) for i in range(3000)))
    assert [r[0].token_id for r in results] == [i + 1 for i in range(3000)]
    assert [r[0].seq_id for r in results] == [f"s{i}" for i in range(3000)]
    assert client._stream is stream and client.steps == 3001


async def test_a_broken_stream_fails_its_step_unavailable_and_the_next_step_reopens(worker) -> None:
    client, loaded, server = worker
    await client.step("f", [prefill("warm", 1)])
    loaded["f"].gate = threading.Event()
    in_flight = asyncio.create_task(client.step("f", [prefill("held", 1)]))
    await asyncio.get_running_loop().run_in_executor(None, loaded["f"].started.wait, 10)
    port = int(client.address.rsplit(":", 1)[1])
    await server.stop(None)  # the worker goes away with the step in flight
    loaded["f"].gate.set()
    with pytest.raises(Unavailable, match=rf"worker at {client.address}"):
        await in_flight
    with pytest.raises(Unavailable):  # nobody listens: a failed step, as a unary call to a dead worker
        await client.step("f", [prefill("nobody", 1)], timeout=5)
    server, _, loaded = await serve(port)  # the worker is back at the same address
    try:
        assert "f" in loaded
        assert (await client.step("f", [prefill("after", 9)]))[0].token_id == 10
    finally:
        await server.stop(None)


async def test_a_step_past_its_deadline_is_unavailable_and_the_stream_runs_on(worker) -> None:
    client, loaded, _ = worker
    await client.step("f", [prefill("warm", 1)])
    loaded["f"].gate = threading.Event()
    with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
        await client.step("f", [prefill("slow", 1)], timeout=0.2)
    loaded["f"].gate.set()  # its late answer finds nobody waiting
    assert (await client.step("f", [prefill("next", 2)]))[0].token_id == 3


@pytest.mark.parametrize("token", [None, "wrong"], ids=["none", "wrong"])
async def test_the_stream_needs_the_link_token(worker, token: str | None) -> None:
    client, _, _ = worker
    async with WorkerClient(client.address, timeout=10, token=token) as stranger:
        with pytest.raises(LinkRefused, match="refused the link credential in Step"):
            await stranger.step("f", [prefill("x", 1)])
    assert (await client.step("f", [prefill("y", 1)]))[0].token_id == 2


async def test_bad_bytes_on_the_stream_end_it_invalid_argument(worker) -> None:
    client, _, _ = worker
    assert client._channel is None
    await client.step("f", [prefill("a", 1)])
    raw = client._channel.stream_stream(STREAM)  # raw bytes both ways
    call = raw(metadata=link_metadata(TOKEN), timeout=10)
    await call.write(b"\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the StepStream request is not a valid protobuf message" in caught.value.details()
    ok = raw(metadata=link_metadata(TOKEN), timeout=10)  # an empty step: answered in-band, stream stays up
    await ok.write(pb.StepStreamRequest(id=5).SerializeToString())
    answer = pb.StepStreamResponse.FromString(await ok.read())
    assert answer.id == 5 and answer.error.code == "NOT_FOUND"
    await ok.done_writing()
    assert await ok.read() is grpc.aio.EOF
    stream = client._stream
    with pytest.raises(NotFound, match="unknown sequence 'ghost'"):  # the client's own stream runs on
        await client.step("f", [SeqStep("ghost", 3, token_ids=[1])])
    assert client._stream is stream and stream.broken is None


class _StuckCall:
    """A StepStream call whose write never completes, as one to a worker killed under it could."""

    def __init__(self) -> None:
        self.cancelled = False
        self._ended = asyncio.Event()

    async def write(self, message) -> None:
        await asyncio.Event().wait()

    async def read(self):
        await self._ended.wait()
        raise asyncio.CancelledError

    def cancel(self) -> bool:
        self.cancelled = True
        self._ended.set()
        return True


async def test_a_write_that_never_completes_ends_at_the_steps_deadline_and_breaks_the_stream() -> None:
    from genie.workers.client import error_from_status
    from genie.workers.step_stream import StepStream

    call = _StuckCall()

    class Stub:
        def StepStream(self, metadata=None):  # noqa: N802 - the generated stub's name
            return call

    stream = StepStream(Stub(), (), "127.0.0.1:1", error_from_status)
    with pytest.raises(Unavailable, match="did not answer Step within 0.2 s"):
        await asyncio.wait_for(stream.step(pb.StepRequest(fragment_id="f"), timeout=0.2), 5)
    assert call.cancelled and stream.broken is not None  # the next step opens a new stream
    with pytest.raises(Unavailable):
        await stream.step(pb.StepRequest(fragment_id="f"), timeout=0.2)
    await stream.close()


async def test_a_step_id_already_in_flight_is_refused_unrun_and_the_first_step_is_answered(worker) -> None:
    from genie.workers import codec

    client, loaded, _ = worker
    await client.step("f", [prefill("warm", 1)])
    raw = client._channel.stream_stream(STREAM)
    call = raw(metadata=link_metadata(TOKEN), timeout=10)
    loaded["f"].gate = gate = threading.Event()
    loaded["f"].started.clear()
    step = pb.StepRequest(fragment_id="f", seqs=[codec.seq_step_to_pb(prefill("a", 41))])
    await call.write(pb.StepStreamRequest(id=7, step=step).SerializeToString())
    assert await asyncio.to_thread(loaded["f"].started.wait, 10)
    other = pb.StepRequest(fragment_id="f", seqs=[codec.seq_step_to_pb(prefill("b", 90))])
    await call.write(pb.StepStreamRequest(id=7, step=other).SerializeToString())
    refused = pb.StepStreamResponse.FromString(await call.read())
    assert refused.id == 7 and refused.error.code == "INVALID_ARGUMENT"
    assert "step id 7 is already in flight" in refused.error.message
    gate.set()
    first = pb.StepStreamResponse.FromString(await call.read())
    assert first.id == 7 and first.HasField("step") and [r.token_id for r in first.step.results] == [42]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
