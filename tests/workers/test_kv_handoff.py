"""KV handoff between two real worker processes (one link token, as a genie-serve pool has): a sequence
prefilled on one worker goes on decoding on the other, token for token as if it had stayed, with the bytes
the KV's shape predicts; the sender frees its copy once acknowledged, and within the lease when the receiver
is hung or dead. Bad requests are refused and change nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from genie.auth import new_link_token
from genie.errors import InvalidRequest, NotFound
from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import spawn_worker

PROMPT = list(range(100, 150))


@pytest.fixture(scope="module")
def pair():
    token = new_link_token()
    a, b = (spawn_worker(device="cpu", threads=1, token=token) for _ in range(2))
    yield a, b
    for proc in (a, b):
        proc.stop()


async def load(proc, spec: FragmentSpec) -> WorkerClient:
    client = WorkerClient(proc.address, token=proc.token)
    await client.load_fragment(spec)
    return client


async def unload(*clients: WorkerClient) -> None:
    for client in clients:
        await client.unload_fragment("f")
        await client.close()


async def decode(client: WorkerClient, seq_id: str, position: int, first: int, steps: int) -> list[int]:
    tokens = [first]
    for i in range(steps):
        (r,) = await client.step("f", [SeqStep(seq_id, position + i, token_ids=[tokens[-1]], sample=True)])
        tokens.append(r.token_id)
    return tokens


def test_a_handed_off_sequence_decodes_on_the_other_worker_as_if_it_had_stayed(pair, gpt2_tiny_dir) -> None:
    a_proc, b_proc = pair
    spec = FragmentSpec("f", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=8 << 20)

    async def run() -> None:
        a, b = await load(a_proc, spec), await load(b_proc, spec)
        try:
            (ref,) = await a.step("f", [SeqStep("ref", 0, token_ids=PROMPT, sample=True)])
            stayed = await decode(a, "ref", len(PROMPT), ref.token_id, 8)
            (first,) = await a.step("f", [SeqStep("s", 0, token_ids=PROMPT, sample=True)])
            sent = await a.send_kv("f", "s", b_proc.address, "f", lease_s=10)
            assert sent.delivered and not sent.error and sent.tokens == len(PROMPT)
            moved = await decode(b, "s", len(PROMPT), first.token_id, 8)
            assert moved == stayed
            # the KV is 4 layers x 2 x 4 heads x 32 dims x 4 bytes per token; the message adds a few bytes
            predicted = len(PROMPT) * 4 * 2 * 4 * 32 * 4
            assert predicted <= sent.bytes <= predicted * 1.05
            sa, sb = await a.stats(), await b.stats()
            assert sa.fragment("f").sequences == 1  # "ref" only: "s" was freed once acknowledged
            assert sa.handoff_bytes_sent == sent.bytes and sb.handoff_bytes_received == sent.bytes
            await a.release("f", ["ref"])
            await b.release("f", ["s"])
        finally:
            await unload(a, b)

    asyncio.run(run())


def names(prefix: str, count: int) -> tuple[bytes, ...]:
    return tuple(f"{prefix}{i:02d}".encode().ljust(16, b".") for i in range(count))


def test_a_prefix_the_receiver_has_cached_is_not_sent_again(pair, gpt2_tiny_dir) -> None:
    a_proc, b_proc = pair
    spec = FragmentSpec("f", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=8 << 20, block_size=16)

    async def run() -> None:
        a, b = await load(a_proc, spec), await load(b_proc, spec)
        try:
            (ref,) = await a.step("f", [SeqStep("ref", 0, token_ids=PROMPT, sample=True)])
            stayed = await decode(a, "ref", len(PROMPT), ref.token_id, 8)
            # b holds the prompt's first two blocks cached (another request's, released since)
            await b.step("f", [SeqStep("owner", 0, token_ids=PROMPT[:40], new_block_hashes=names("p", 2))])
            await b.release("f", ["owner"])
            (first,) = await a.step("f", [SeqStep("s", 0, token_ids=PROMPT, sample=True)])
            with pytest.raises(InvalidRequest, match="skip_tokens"):  # a skip that is not the prefix: refused
                await a.send_kv("f", "s", b_proc.address, "f", lease_s=10, skip_tokens=16, prefix=names("p", 2))
            sent = await a.send_kv("f", "s", b_proc.address, "f", lease_s=10, skip_tokens=32, prefix=names("p", 2),
                                   new_hashes=names("p", 3)[2:])
            assert sent.delivered and not sent.error and sent.tokens == len(PROMPT) - 32
            assert sent.bytes <= (len(PROMPT) - 32) * 4 * 2 * 4 * 32 * 4 * 1.05  # only the 18 tokens after the prefix
            assert await decode(b, "s", len(PROMPT), first.token_id, 8) == stayed
            stats = (await b.stats()).fragment("f")
            assert (stats.kv_blocks_cached, stats.kv_blocks_shared) == (3, 0)  # the imported full block is named
            await a.release("f", ["ref"])
            await b.release("f", ["s"])
        finally:
            await unload(a, b)

    asyncio.run(run())


def test_the_sender_frees_its_copy_within_the_lease_when_the_receiver_hangs_or_dies(gpt2_tiny_dir) -> None:
    token = new_link_token()
    a_proc, b_proc = (spawn_worker(device="cpu", threads=1, token=token) for _ in range(2))
    spec = FragmentSpec("f", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=8 << 20)

    async def run() -> None:
        a, b = await load(a_proc, spec), await load(b_proc, spec)
        try:
            await a.step("f", [SeqStep("hung", 0, token_ids=PROMPT, sample=True)])
            os.kill(b_proc.pid, signal.SIGSTOP)
            started = time.monotonic()
            sent = await a.send_kv("f", "hung", b_proc.address, "f", lease_s=1.0)
            took = time.monotonic() - started
            assert not sent.delivered and sent.error and took < 5.0
            assert (await a.stats()).fragment("f").sequences == 0
            os.kill(b_proc.pid, signal.SIGCONT)
            await b.release("f", ["none"])  # engine work queued behind the late import, if it runs at all
            assert (await b.stats()).fragment("f").sequences == 0  # a late arrival is dropped, not kept
            await a.step("f", [SeqStep("dead", 0, token_ids=PROMPT, sample=True)])
            os.kill(b_proc.pid, signal.SIGKILL)
            sent = await a.send_kv("f", "dead", b_proc.address, "f", lease_s=5.0)
            assert not sent.delivered and (await a.stats()).fragment("f").sequences == 0
            with pytest.raises(NotFound):
                await a.send_kv("f", "nobody", b_proc.address, "f", lease_s=1.0)
            with pytest.raises(InvalidRequest, match="lease_s"):
                await a.send_kv("f", "nobody", b_proc.address, "f", lease_s=0)
        finally:
            await a.close()
            await b.close()

    try:
        asyncio.run(run())
    finally:
        a_proc.stop()
        b_proc.stop()
