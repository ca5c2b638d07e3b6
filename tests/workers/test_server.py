"""The worker servicer over real gRPC on 127.0.0.1, driven by WorkerClient, with a fake engine fragment.

The fake stands in for the engine so these tests pin down the service itself: error mapping, the engine
thread, counters. tests/workers/test_server_real.py runs the same service on real worker processes.
"""

from __future__ import annotations

import asyncio
import math
import threading

import grpc
import pytest
import torch

from genie.auth import KeySet, link_metadata
from genie.errors import AlreadyExists, InvalidRequest, NotFound, ResourceExhausted, Unavailable
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers import codec
from genie.workers.client import LinkRefused, WorkerClient, WorkerInternalError
from genie.workers.device import DeviceFacts
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats, SeqResult, SeqStep
from genie.workers.server import WorkerServicer, engine_thread, start_server

TOKEN = "test-link-token"
FACTS = DeviceFacts("cpu", "test cpu", 1 << 34, 1 << 33, 10.0, 0.1, "float32", ("llm.decoder", "paged_kv"))


class FakeFragment:
    """Engine stand-in: the next token is (last token + 1) % vocab; KV blocks are only counted.

    Like the engine, it validates the whole batch before touching state. `gate`, when set, makes step()
    wait for it, so a test can hold a step in flight.
    """

    def __init__(self, spec: FragmentSpec, num_blocks: int = 8, block_size: int = 4) -> None:
        self.spec = spec
        self.info = FragmentInfo(spec.fragment_id, 2, num_blocks, block_size, 1024, 8, 100, 64, "float32")
        self.lengths: dict[str, int] = {}
        self.gate: threading.Event | None = None
        self.running = 0
        self.max_running = 0

    def _blocks(self, tokens: int) -> int:
        return math.ceil(tokens / self.info.block_size)

    def _validate(self, seqs: list[SeqStep]) -> None:
        needed = 0
        for seq in seqs:
            if seq.position > 0 and seq.seq_id not in self.lengths:
                raise NotFound(f"unknown sequence {seq.seq_id!r}")
            if seq.seq_id == "boom":
                raise RuntimeError("fake engine bug")
            if seq.hidden is not None and seq.hidden.dtype != torch.float32:
                raise InvalidRequest(f"hidden of {seq.seq_id!r} is {seq.hidden.dtype}, expected float32")
            have = self.lengths.get(seq.seq_id, 0)
            needed += self._blocks(have + seq.num_tokens) - self._blocks(have)
        if needed > self.info.num_kv_blocks - self.used_blocks():
            raise ResourceExhausted(f"out of KV blocks: need {needed}, {self.stats().kv_blocks_free} free")

    def step(self, seqs: list[SeqStep]) -> list[SeqResult]:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "test never opened the gate"
            self._validate(seqs)
            for seq in seqs:
                self.lengths[seq.seq_id] = self.lengths.get(seq.seq_id, 0) + seq.num_tokens
            return [SeqResult(s.seq_id, token_id=(s.token_ids[-1] + 1) % 100) for s in seqs]
        finally:
            self.running -= 1

    def release(self, seq_ids: list[str]) -> int:
        return sum(self.lengths.pop(seq_id, None) is not None for seq_id in seq_ids)

    def used_blocks(self) -> int:
        return sum(self._blocks(n) for n in self.lengths.values())

    def stats(self) -> FragmentStats:
        used = self.used_blocks()
        total = self.info.num_kv_blocks
        return FragmentStats(self.info.fragment_id, total, used, total - used, len(self.lengths), self.info.block_size)


@pytest.fixture
async def worker():
    loaded: dict[str, FakeFragment] = {}

    def loader(spec: FragmentSpec, device: torch.device) -> FakeFragment:
        if spec.model_dir == "/missing":
            raise NotFound(f"no model folder at {spec.model_dir}")
        loaded[spec.fragment_id] = FakeFragment(spec)
        return loaded[spec.fragment_id]

    servicer = WorkerServicer(torch.device("cpu"), FACTS, loader=loader, default_kv_bytes=1 << 20)
    server, port = await start_server(servicer, "127.0.0.1:0", link_keys=KeySet([TOKEN]))
    client = WorkerClient(f"127.0.0.1:{port}", timeout=30, token=TOKEN)
    await client.load_fragment(FragmentSpec("f", "/models/fake", kv_cache_bytes=0))  # 0: the worker's default
    yield client, loaded, servicer
    await client.close()
    await server.stop(None)
    servicer.close()


def prefill(seq_id: str, tokens: list[int]) -> SeqStep:
    return SeqStep(seq_id, 0, token_ids=tokens, sample=True)


async def assert_still_serving(client: WorkerClient) -> None:
    assert (await client.health()).serving
    results = await client.step("f", [prefill(f"check-{id(client)}", [5])])
    assert results[0].token_id == 6


async def test_health_info_and_load(worker) -> None:
    client, loaded, _ = worker
    assert await client.health() == (await client.health())
    info = await client.info()
    assert info.fragments == ("f",) and info.device == "cpu" and info.capabilities == FACTS.capabilities
    assert info.memory_total_bytes > 0 and info.version
    assert loaded["f"].spec.kv_cache_bytes == 1 << 20  # the worker's default filled in for 0
    assert loaded["f"].spec.layer_end == -1


async def test_step_release_and_stats(worker) -> None:
    client, loaded, _ = worker
    results = await client.step("f", [prefill("a", [1, 2, 3, 4, 5]), prefill("b", [9])])
    assert [(r.seq_id, r.token_id) for r in results] == [("a", 6), ("b", 10)]
    decode = await client.step("f", [SeqStep("a", 5, token_ids=[6], sample=True)])
    assert decode[0].token_id == 7

    stats = await client.stats()
    assert stats.steps == 2 and stats.tokens == 7
    assert stats.fragment("f").kv_blocks_used == 3  # a: 6 tokens in 2 blocks, b: 1 block
    assert stats.bytes_received == client.step_bytes_sent > 0
    assert stats.bytes_sent == client.step_bytes_received > 0

    assert await client.release("f", ["a", "b", "never-existed"]) == 2
    after = (await client.stats()).fragment("f")
    assert after.kv_blocks_used == 0 and after.kv_blocks_free == after.kv_blocks_total and after.sequences == 0


async def test_unknown_fragment_names_the_loaded_ones(worker) -> None:
    client, _, _ = worker
    with pytest.raises(NotFound, match=r"no fragment 'nope' on this worker \(loaded: f\)"):
        await client.step("nope", [prefill("a", [1])])
    with pytest.raises(NotFound, match="nope"):
        await client.release("nope", ["a"])
    with pytest.raises(NotFound, match="nope"):
        await client.unload_fragment("nope")
    await assert_still_serving(client)


async def test_engine_errors_map_to_their_status(worker) -> None:
    client, _, _ = worker
    with pytest.raises(NotFound, match="unknown sequence 'ghost'"):
        await client.step("f", [SeqStep("ghost", 3, token_ids=[1])])
    with pytest.raises(ResourceExhausted, match="out of KV blocks"):
        await client.step("f", [prefill("big", list(range(40)))])
    with pytest.raises(InvalidRequest, match="bfloat16, expected float32"):
        await client.step("f", [SeqStep("h", 0, hidden=torch.zeros(2, 8, dtype=torch.bfloat16))])
    await assert_still_serving(client)


async def test_corrupt_tensor_bytes_answer_invalid_argument(worker) -> None:
    client, _, _ = worker
    stub = worker_pb2_grpc.WorkerStub(client._channel)
    seq = pb.SeqStep(seq_id="x", hidden=pb.Tensor(dtype="float32", shape=[2, 8], data=bytes(10)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Step(pb.StepRequest(fragment_id="f", seqs=[seq]), metadata=link_metadata(TOKEN))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hidden of sequence 'x' carries 10 bytes but shape [2, 8] of float32 needs 64" in caught.value.details()
    await assert_still_serving(client)


async def test_unexpected_exception_is_internal_and_the_worker_keeps_serving(worker, caplog) -> None:
    client, _, _ = worker
    with pytest.raises(WorkerInternalError, match=r"Step failed inside the worker \(RuntimeError\)") as caught:
        await client.step("f", [prefill("boom", [1])])
    assert "fake engine bug" not in str(caught.value)  # its text may hold anything: it stays in the log
    assert "fake engine bug" in caplog.text and "Traceback" in caplog.text
    await assert_still_serving(client)


async def test_corrupt_wire_bytes_answer_invalid_argument(worker) -> None:
    client, _, _ = worker
    raw = client._channel.unary_unary("/genie.worker.Worker/Step")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(b"\xff\xff\xff", metadata=link_metadata(TOKEN), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the Step request is not a valid protobuf message" in caught.value.details()
    await assert_still_serving(client)


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"], ids=["none", "wrong", "longer"])
async def test_calls_without_the_link_token_are_refused(worker, token: str | None) -> None:
    client, loaded, servicer = worker
    async with WorkerClient(client.address, timeout=10, token=token) as stranger:
        with pytest.raises(LinkRefused, match=rf"the worker at {client.address} refused the link credential in Health"):
            await stranger.health()
        with pytest.raises(LinkRefused) as caught:
            await stranger.unload_fragment("f")
    assert TOKEN not in str(caught.value)
    assert "f" in loaded and servicer.steps == 0
    await assert_still_serving(client)


async def test_load_twice_unload_and_missing_model(worker) -> None:
    client, _, _ = worker
    with pytest.raises(AlreadyExists, match="'f' is already loaded"):
        await client.load_fragment(FragmentSpec("f", "/models/fake"))
    with pytest.raises(NotFound, match="no model folder at /missing"):
        await client.load_fragment(FragmentSpec("g", "/missing"))
    assert (await client.info()).fragments == ("f",)
    await client.unload_fragment("f")
    assert (await client.info()).fragments == ()
    info = await client.load_fragment(FragmentSpec("f", "/models/fake"))
    assert info.fragment_id == "f" and info.num_kv_blocks == 8


async def test_health_and_stats_answer_while_a_step_runs_and_steps_are_serialized(worker) -> None:
    client, loaded, _ = worker
    fragment = loaded["f"]
    fragment.gate = threading.Event()
    steps = [asyncio.create_task(client.step("f", [prefill(f"s{i}", [i])])) for i in range(3)]
    while fragment.running == 0:  # wait until the engine thread has picked up the first step
        await asyncio.sleep(0.01)
    assert (await client.health(timeout=2)).serving
    assert (await client.stats(timeout=2)).steps == 0
    assert not any(task.done() for task in steps)
    fragment.gate.set()
    results = await asyncio.gather(*steps)
    assert [r[0].token_id for r in results] == [1, 2, 3]
    assert fragment.max_running == 1


async def test_dead_worker_is_unavailable_naming_the_address() -> None:
    client = WorkerClient("127.0.0.1:1", timeout=5)
    with pytest.raises(Unavailable, match=r"worker at 127.0.0.1:1 did not answer Health"):
        await client.health()
    await client.close()
    with pytest.raises(Unavailable, match="closed"):
        await client.health()


async def test_deadline_is_unavailable(worker) -> None:
    client, loaded, _ = worker
    loaded["f"].gate = threading.Event()
    with pytest.raises(Unavailable, match="DEADLINE_EXCEEDED"):
        await client.step("f", [prefill("slow", [1])], timeout=0.2)
    loaded["f"].gate.set()
    await assert_still_serving(client)


async def test_stopping_worker_reports_not_serving(worker) -> None:
    client, _, servicer = worker
    servicer.stopping = True
    health = await client.health()
    assert not health.serving and health.status == "stopping"


async def test_in_flight_calls_are_bounded_per_channel(worker) -> None:
    client, loaded, servicer = worker
    bounded = WorkerClient(client.address, timeout=10, max_in_flight=2, token=TOKEN)
    fragment = loaded["f"]
    fragment.gate = threading.Event()
    steps = [asyncio.create_task(bounded.step("f", [prefill(f"q{i}", [i])])) for i in range(6)]
    one_request = pb.StepRequest(fragment_id="f", seqs=[codec.seq_step_to_pb(prefill("q0", [0]))])
    while servicer.bytes_received < 2 * one_request.ByteSize():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # room for a third call to arrive, if the bound leaked
    assert servicer.bytes_received == 2 * one_request.ByteSize()
    fragment.gate.set()
    assert len(await asyncio.gather(*steps)) == 6
    await bounded.close()


async def test_thousands_of_concurrent_calls_on_one_channel(worker) -> None:
    client, _, _ = worker
    answers = await asyncio.gather(*(client.health() for _ in range(3000)))
    assert all(answer.serving for answer in answers)


def test_engine_thread_runs_torch_with_the_asked_threads() -> None:
    before = torch.get_num_threads()
    engine = engine_thread(1)
    try:
        on_engine = engine.submit(lambda: (threading.current_thread().name, torch.get_num_threads())).result()
    finally:
        engine.shutdown()
    assert on_engine[0].startswith("genie-engine") and on_engine[1] == 1
    assert torch.get_num_threads() == before  # the caller's threads are left alone
