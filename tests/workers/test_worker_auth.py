"""The worker link's door on a real `genie-worker` over real gRPC on 127.0.0.1: the link token on every RPC,
attacks with a stolen sequence id, the artifact root, verified weights, and where the token must not show."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from genie.auth import link_metadata
from genie.errors import InvalidRequest
from genie.protos import worker_pb2 as pb
from genie.workers.client import LinkRefused, WorkerClient
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import WorkerProcess, spawn_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SERVICE = pb.DESCRIPTOR.services_by_name["Worker"]
FRAG = "f"
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def root(tmp_path_factory, gpt2_tiny_dir: Path) -> Path:
    """The worker's artifact root, holding a copy of the tiny GPT-2 (gpt2_tiny_dir itself lies outside it)."""
    root = tmp_path_factory.mktemp("artifacts")
    shutil.copytree(gpt2_tiny_dir, root / "gpt2")
    return root


@pytest.fixture(scope="module")
def worker(root: Path, worker_log) -> Iterator[WorkerProcess]:
    with spawn_worker(device="cpu", threads=1, artifact_roots=[str(root)]) as proc:
        yield proc
        assert proc.alive(), f"the worker died:\n{proc.stderr_tail()}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(worker: WorkerProcess, root: Path):
    async with WorkerClient(worker.address, timeout=60, token=worker.token) as client:
        await client.load_fragment(FragmentSpec(FRAG, str(root / "gpt2"), dtype="float32", kv_cache_bytes=8 << 20))
        yield client


async def generate(client: WorkerClient, seq_id: str, prompt: list[int]) -> list[int]:
    [result] = await client.step(FRAG, [SeqStep(seq_id, 0, token_ids=prompt, sample=True)])
    tokens = [result.token_id]
    for i in range(NEW_TOKENS - 1):
        step = SeqStep(seq_id, len(prompt) + i, token_ids=[tokens[-1]], sample=True)
        [result] = await client.step(FRAG, [step])
        tokens.append(result.token_id)
        await asyncio.sleep(0.01)  # room for the attacker's calls between two steps
    await client.release(FRAG, [seq_id])
    return tokens


async def call_raw(channel: grpc.aio.Channel, method, metadata) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    request_type = getattr(pb, method.input_type.name)
    rpc = channel.unary_unary(
        f"/{SERVICE.full_name}/{method.name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=getattr(pb, method.output_type.name).FromString,
    )
    try:
        await rpc(request_type(), metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("token", [None, "wrong", ""], ids=["none", "wrong", "empty"])
async def test_every_rpc_refuses_a_caller_without_the_link_token(worker, client, token: str | None) -> None:
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        for method in SERVICE.methods:
            code, details = await call_raw(channel, method, metadata)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method.name, code, details)
            assert details.count("\n") == 0 and "link credential" in details
            assert worker.token not in details


async def test_every_rpc_answers_the_right_token(worker, client) -> None:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        for method in SERVICE.methods:  # empty requests: some are refused, but for what they say
            code, details = await call_raw(channel, method, link_metadata(worker.token))
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
                method.name, code, details)
    assert (await client.health()).serving


async def test_attacks_with_a_stolen_sequence_id_change_nothing(worker, client, root: Path) -> None:
    prompt = [5, 17, 99, 3, 250, 8]
    undisturbed = await generate(client, "reference", prompt)
    victim = "req-0"  # stolen: the attacker knows it, but not the link token
    attackers = [WorkerClient(worker.address, timeout=30), WorkerClient(worker.address, timeout=30, token="guess")]
    attacks = [
        lambda c: c.release(FRAG, [victim]),
        lambda c: c.step(FRAG, [SeqStep(victim, 0, token_ids=[1, 2, 3], sample=True)]),
        lambda c: c.step(FRAG, [SeqStep(victim, len(prompt), token_ids=[7], sample=True)]),
        lambda c: c.unload_fragment(FRAG),
        lambda c: c.load_fragment(FragmentSpec(FRAG, "/")),
        lambda c: c.load_fragment(FragmentSpec("evil", "/", kv_cache_bytes=1 << 30)),
    ]
    done = asyncio.Event()
    refused = 0

    async def attack() -> None:
        nonlocal refused
        while not done.is_set():
            for attacker in attackers:
                for act in attacks:
                    with pytest.raises(LinkRefused, match="refused the link credential"):
                        await act(attacker)
                    refused += 1

    attacking = asyncio.create_task(attack())
    try:
        disturbed = await generate(client, victim, prompt)
    finally:
        done.set()
        await attacking
        for attacker in attackers:
            await attacker.close()
    assert disturbed == undisturbed
    assert refused >= len(attacks) * len(attackers)
    stats = (await client.stats()).fragment(FRAG)
    assert stats.sequences == 0 and (await client.info()).fragments == (FRAG,)


@pytest.mark.parametrize(
    "model_dir",
    # gpt2_tiny_dir and the root are siblings, so root/gpt2/../.. is their common parent
    ["/", "{outside}", "{root}/gpt2/../../{outside_name}", "{root}/escape"],
    ids=["slash", "outside", "dotdot", "symlink"],
)
async def test_load_outside_the_artifact_root_is_refused(client, root: Path, gpt2_tiny_dir: Path,
                                                         model_dir: str) -> None:
    if not (root / "escape").exists():
        (root / "escape").symlink_to(gpt2_tiny_dir, target_is_directory=True)
    outside = gpt2_tiny_dir.resolve()
    path = model_dir.format(root=root, outside=outside, outside_name=outside.name)
    with pytest.raises(InvalidRequest, match=rf"permission denied: model_dir .* is outside this worker's "
                                             rf"artifact root {root.resolve()}"):
        await client.load_fragment(FragmentSpec("outside", path, dtype="float32", kv_cache_bytes=1 << 20))
    assert (await client.info()).fragments == (FRAG,)


async def test_a_symlinked_file_pointing_out_of_the_root_is_refused(client, root: Path, gpt2_tiny_dir: Path) -> None:
    folder = root / "planted"
    shutil.copytree(gpt2_tiny_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(gpt2_tiny_dir / "model.safetensors")
    with pytest.raises(InvalidRequest, match=r"model.safetensors in model_dir .* \(a symlink\) is outside"):
        await client.load_fragment(FragmentSpec("planted", str(folder), dtype="float32", kv_cache_bytes=1 << 20))


async def test_a_flipped_byte_is_refused_and_the_worker_keeps_serving(client, root: Path) -> None:
    good = root / "gpt2" / "model.safetensors"
    recorded = hashlib.sha256(good.read_bytes()).hexdigest()
    damaged = root / "damaged"
    shutil.copytree(root / "gpt2", damaged)
    data = bytearray((damaged / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (damaged / "model.safetensors").write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()
    expected = (("model.safetensors", recorded),)
    spec = FragmentSpec("damaged", str(damaged), dtype="float32", kv_cache_bytes=1 << 20, expected_sha256=expected)
    message = (rf"artifact model.safetensors of model_dir '{damaged}' has sha256 {actual}, the registry recorded "
               rf"{recorded}; run `genie-models verify NAME`")
    with pytest.raises(InvalidRequest, match=message):
        await client.load_fragment(spec)
    with pytest.raises(InvalidRequest, match="give file names relative to model_dir"):
        await client.load_fragment(FragmentSpec("x", str(damaged), expected_sha256=(("../gpt2/config.json", "0"),)))
    verified = FragmentSpec("verified", str(root / "gpt2"), dtype="float32", kv_cache_bytes=1 << 20,
                            expected_sha256=expected)
    assert (await client.load_fragment(verified)).fragment_id == "verified"
    await client.unload_fragment("verified")
    assert (await client.health()).serving
    assert len(await generate(client, "after-damage", [1, 2, 3])) == NEW_TOKENS


async def test_the_token_is_in_neither_argv_nor_the_log(worker, client, worker_log) -> None:
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode()
    assert worker.token not in cmdline and "--parent-pid" in cmdline
    assert any("refused a call to" in line for line in worker_log.lines)  # the attacks above were logged
    assert not [line for line in worker_log.lines if worker.token in line]
    assert worker.token not in worker.log_tail()
