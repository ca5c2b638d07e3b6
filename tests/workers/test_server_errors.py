"""Bad input against a real worker process (tiny GPT-2): a clear status, nothing lost, and it keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import torch

from genie.auth import link_metadata
from genie.errors import AlreadyExists, GenieError, InvalidRequest, NotFound, ResourceExhausted
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import spawn_worker

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def worker():
    with spawn_worker(device="cpu", threads=1) as proc:
        yield proc
        assert proc.alive(), f"the worker died:\n{proc.stderr_tail()}"
        assert proc.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(worker, gpt2_tiny_dir):
    async with WorkerClient(worker.address, timeout=60, token=worker.token) as client:
        await client.load_fragment(FragmentSpec("full", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=8 << 20))
        tail = FragmentSpec("tail", str(gpt2_tiny_dir), 2, -1, has_embedding=False, dtype="float32")
        await client.load_fragment(tail)
        yield client


async def assert_still_serving(client: WorkerClient, worker) -> None:
    assert worker.alive()
    assert (await client.health()).serving
    [result] = await client.step("full", [SeqStep("probe", 0, token_ids=[1, 2, 3], sample=True)])
    assert 0 <= result.token_id < 1000
    assert await client.release("full", ["probe"]) == 1


async def expect(error: type[GenieError], pattern: str, call) -> None:  # noqa: ANN001
    with pytest.raises(error, match=pattern):
        await call


async def test_unknown_fragment(client, worker) -> None:
    await expect(NotFound, r"no fragment 'nope' on this worker \(loaded: full, tail\)",
                 client.step("nope", [SeqStep("s", 0, token_ids=[1])]))
    await assert_still_serving(client, worker)


async def test_step_for_unknown_sequence(client, worker) -> None:
    await expect(NotFound, "ghost", client.step("full", [SeqStep("ghost", 7, token_ids=[1])]))
    assert await client.release("full", ["ghost"]) == 0  # releasing an unknown sequence frees nothing
    await assert_still_serving(client, worker)


async def test_out_of_kv_blocks_then_release_frees_them(client, worker, gpt2_tiny_dir) -> None:
    info = await client.load_fragment(FragmentSpec("small", str(gpt2_tiny_dir), dtype="float32",
                                                   kv_cache_bytes=256 << 10, block_size=16))
    blocks, size = info.num_kv_blocks, info.block_size
    assert 2 <= blocks < 20, "the tiny budget should give a handful of blocks"
    await client.step("small", [SeqStep("a", 0, token_ids=[7] * ((blocks - 1) * size))])
    await expect(ResourceExhausted, "is full", client.step("small", [SeqStep("b", 0, token_ids=[7] * (2 * size))]))
    stats = (await client.stats()).fragment("small")
    assert (stats.kv_blocks_used, stats.sequences) == (blocks - 1, 1)  # the rejected step took nothing

    assert await client.release("small", ["a"]) == 1
    stats = (await client.stats()).fragment("small")
    assert (stats.kv_blocks_used, stats.kv_blocks_free, stats.sequences) == (0, blocks, 0)
    await client.step("small", [SeqStep("b", 0, token_ids=[7] * (2 * size))])  # fits now
    await client.unload_fragment("small")
    await assert_still_serving(client, worker)


@pytest.mark.parametrize(
    ("hidden", "pattern"),
    [
        # Float dtypes are cast to the fragment's dtype; integers and float64 are refused.
        (torch.zeros(3, 128, dtype=torch.int64), "hidden dtype int64 is not one of"),
        (torch.zeros(3, 128, dtype=torch.float64), "hidden dtype float64 is not one of"),
        (torch.zeros(3, 64), r"hidden must have shape \[n, 128\], got \[3, 64\]"),
        (torch.zeros(128), r"hidden must have shape \[n, 128\], got \[128\]"),
    ],
    ids=["int64", "float64", "wrong-width", "1-d"],
)
async def test_wrong_hidden_states(client, worker, hidden: torch.Tensor, pattern: str) -> None:
    await expect(InvalidRequest, pattern, client.step("tail", [SeqStep("h", 0, hidden=hidden, sample=True)]))
    assert (await client.stats()).fragment("tail").sequences == 0
    await assert_still_serving(client, worker)


async def test_tokens_out_of_vocab_and_missing_input(client, worker) -> None:
    await expect(InvalidRequest, r"token id 1000 is outside the vocabulary \[0, 1000\)",
                 client.step("full", [SeqStep("v", 0, token_ids=[1, 1000])]))
    await expect(InvalidRequest, "send hidden states", client.step("tail", [SeqStep("t", 0, token_ids=[1])]))
    await assert_still_serving(client, worker)


async def test_tensor_bytes_that_do_not_match_the_shape(client, worker) -> None:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        seq = pb.SeqStep(seq_id="x", hidden=pb.Tensor(dtype="float32", shape=[2, 128], data=bytes(100)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Step(pb.StepRequest(fragment_id="tail", seqs=[seq]), metadata=link_metadata(worker.token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries 100 bytes but shape [2, 128] of float32 needs 1024" in caught.value.details()
    await assert_still_serving(client, worker)


def corrupt_copy(src: Path, dst: Path, damage) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    return dst


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: data[:8] + bytes(b ^ 0xFF for b in data[8:64]) + data[64:],
        lambda data: b"",
    ],
    ids=["truncated", "flipped-header", "empty"],
)
async def test_corrupt_safetensors(client, worker, gpt2_tiny_dir, tmp_path, damage) -> None:
    bad = corrupt_copy(gpt2_tiny_dir, tmp_path / "bad", damage)
    await expect(InvalidRequest, "model.safetensors", client.load_fragment(FragmentSpec("bad", str(bad))))
    assert "bad" not in (await client.info()).fragments
    await assert_still_serving(client, worker)


async def test_missing_model_dir_and_duplicate_id(client, worker, tmp_path) -> None:
    await expect(GenieError, "config.json", client.load_fragment(FragmentSpec("gone", str(tmp_path / "none"))))
    await expect(AlreadyExists, "'full' is already loaded", client.load_fragment(FragmentSpec("full", "/x")))
    assert (await client.info()).fragments == ("full", "tail")
    await assert_still_serving(client, worker)


async def test_kv_budget_beyond_free_memory_is_refused_before_allocating(client, worker, gpt2_tiny_dir) -> None:
    # Zero-filling this much would get the worker OOM-killed; it must refuse instead.
    huge = FragmentSpec("huge", str(gpt2_tiny_dir), kv_cache_bytes=(await client.info()).memory_total_bytes)
    await expect(ResourceExhausted, "lower kv_cache_bytes", client.load_fragment(huge))
    await expect(InvalidRequest, "smaller than one KV block",
                 client.load_fragment(FragmentSpec("tiny", str(gpt2_tiny_dir), kv_cache_bytes=100)))
    assert (await client.info()).fragments == ("full", "tail")
    await assert_still_serving(client, worker)
