"""Re-attaching to a worker that outlived its genie-serve, over real gRPC on 127.0.0.1 with a fake engine
fragment: a fragment loaded from the same spec is reused (not loaded again), one from another spec is replaced,
and release-all frees what a lost router left, behind the link credential like every other call."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genie.auth import KeySet
from genie.errors import AlreadyExists
from genie.serving.reattach import load_or_reuse
from genie.workers.client import LinkRefused, WorkerClient
from genie.workers.contract import FragmentInfo, FragmentSpec, FragmentStats
from genie.workers.device import DeviceFacts
from genie.workers.server import WorkerServicer, start_server

TOKEN = "test-link-token"
FACTS = DeviceFacts("cpu", "test cpu", 1 << 34, 1 << 33, 10.0, 0.1, "float32", ("llm.decoder", "paged_kv"))
SPEC = FragmentSpec("r0", "/models/m", 0, 2, True, True, "float32", 1 << 20, 4)


class HeldFragment:
    """Holds sequences by id only: what release-all must find and free."""

    def __init__(self, spec: FragmentSpec) -> None:
        self.spec = spec
        self.info = FragmentInfo(spec.fragment_id, 2, 8, 4, 1024, 8, 100, 64, "float32")
        self.seqs: set[str] = set()

    def release_all(self) -> tuple[int, int]:
        released, self.seqs = len(self.seqs), set()
        return released, 0

    def release(self, seq_ids) -> int:
        known = self.seqs & set(seq_ids)
        self.seqs -= known
        return len(known)

    def evict(self, hashes) -> int:
        return 0

    def stats(self) -> FragmentStats:
        return FragmentStats(self.info.fragment_id, 8, len(self.seqs), 8 - len(self.seqs), len(self.seqs), 4)


@pytest.fixture
async def worker():
    loaded: list[HeldFragment] = []

    def loader(spec: FragmentSpec, device: torch.device) -> HeldFragment:
        loaded.append(HeldFragment(spec))
        return loaded[-1]

    servicer = WorkerServicer(torch.device("cpu"), FACTS, loader=loader)
    server, port = await start_server(servicer, "127.0.0.1:0", link_keys=KeySet([TOKEN]))
    client = WorkerClient(f"127.0.0.1:{port}", timeout=10, token=TOKEN)
    yield client, loaded
    await client.close()
    await server.stop(0)
    servicer.close()


async def test_a_fragment_loaded_from_the_same_spec_is_reused_not_loaded_again(worker) -> None:
    client, loaded = worker
    first = await client.load_fragment(SPEC)
    loaded[0].seqs |= {"lost-1", "lost-2"}  # a killed router's requests
    again = await load_or_reuse(client, SPEC, timeout=10)
    assert again == first and len(loaded) == 1
    stats = await client.stats()
    assert stats.fragments_loaded == 1
    assert stats.fragment("r0").sequences == 0, "the lost router's sequences still hold KV"
    with pytest.raises(AlreadyExists):  # without reuse, a second load is still refused
        await client.load_fragment(SPEC)


async def test_a_fragment_loaded_from_another_spec_is_replaced(worker) -> None:
    client, loaded = worker
    await client.load_fragment(SPEC)
    changed = dataclasses.replace(SPEC, kv_cache_bytes=2 << 20)  # the config's kv_cache_mib changed
    with pytest.raises(AlreadyExists):
        await client.load_fragment(changed, reuse=True)
    await load_or_reuse(client, changed, timeout=10)
    assert [f.spec.kv_cache_bytes for f in loaded] == [1 << 20, 2 << 20]
    assert (await client.stats()).fragments_loaded == 2


async def test_release_all_needs_the_link_credential(worker) -> None:
    client, loaded = worker
    await client.load_fragment(SPEC)
    loaded[0].seqs |= {"a", "b", "c"}
    async with WorkerClient(client.address, timeout=10, token="wrong") as stranger:
        with pytest.raises(LinkRefused):
            await stranger.release_all("r0")
    assert await client.release_all("r0") == 3
    assert await client.release_all("r0") == 0
