"""The loops behind `genie-bench compare`'s rows do the same work, and count real bytes.

A small random GPT-2 with large initial weights (so greedy decoding does not just repeat one token) runs
through HF `generate` (one by one and statically batched), our engine in-process, and a real worker process
in pinned, blind-kv and blind-recompute mode; in float32 all give the same tokens. The worker-link bytes
come from serialized Step messages, counted on both ends.
"""

from __future__ import annotations

import pytest
import pytest_asyncio
import torch

from genie.benchmarks import hf_baseline
from genie.benchmarks.steppers import BlindKVStepper, BlindRecomputeStepper, PinnedStepper, _chunks
from genie.benchmarks.streams import run_streams
from genie.benchmarks.workload import Workload
from genie.workers.client import WorkerClient
from genie.workers.blind import BlindSeqStep
from genie.workers.engine import FragmentSpec, SeqStep, load_fragment

in_module_loop = pytest.mark.asyncio(loop_scope="module")

LAYERS, HIDDEN, VOCAB = 2, 64, 500
KV_BYTES_PER_TOKEN = LAYERS * 2 * HIDDEN * 4  # K and V of every layer, float32
FRAG = "loops"


def workload(lengths: tuple[int, ...], output_len: int = 8, seed: int = 1) -> Workload:
    g = torch.Generator().manual_seed(seed)
    ids = tuple(tuple(torch.randint(2, VOCAB, (n,), generator=g).tolist()) for n in lengths)
    return Workload(prompts=(), token_ids=ids, output_len=output_len, ignore_eos=True, eos_ids=frozenset({1}))


WORK = workload((5, 17, 9, 30, 3))


@pytest.fixture(scope="module")
def lively_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=LAYERS, n_embd=HIDDEN, n_head=4, n_positions=256, vocab_size=VOCAB,
                        initializer_range=0.3, bos_token_id=0, eos_token_id=1)
    out = tmp_path_factory.mktemp("gpt2-lively")
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def reference(lively_gpt2) -> list[tuple[int, ...]]:
    model = hf_baseline.load_model(lively_gpt2, torch.float32)
    outputs = list(hf_baseline.one_by_one(model, WORK).outputs)
    assert len({o for o in outputs}) == len(outputs) and all(len(set(o)) > 2 for o in outputs)  # not degenerate
    return outputs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(cpu_worker, lively_gpt2):
    async with WorkerClient(cpu_worker.address, timeout=60, token=cpu_worker.token) as c:
        await c.load_fragment(FragmentSpec(FRAG, str(lively_gpt2), dtype="float32", kv_cache_bytes=1 << 20))
        yield c


def test_hf_static_batches_with_left_padding_match_one_by_one(lively_gpt2, reference) -> None:
    model = hf_baseline.load_model(lively_gpt2, torch.float32)
    run = hf_baseline.static_batches(model, WORK, batch=3)  # a batch of 3, then one of 2
    assert list(run.outputs) == reference
    assert run.output_tokens == 5 * 8 and len(run.e2e_s) == 5


def test_hf_stops_at_eos_unless_told_to_ignore_it(lively_gpt2, reference) -> None:
    eos = reference[0][2]
    model = hf_baseline.load_model(lively_gpt2, torch.float32)
    stopping = Workload((), WORK.token_ids[:1], 8, ignore_eos=False, eos_ids=frozenset({eos}))
    assert hf_baseline.one_by_one(model, stopping).outputs[0] == reference[0][:3]


@in_module_loop
async def test_engine_in_process_loop_matches_hf(lively_gpt2, reference) -> None:
    fragment = load_fragment(FragmentSpec("inproc", str(lively_gpt2), dtype="float32", kv_cache_bytes=1 << 20))

    async def step(seqs: list[SeqStep]):
        return fragment.step(seqs)

    async def release(ids: list[str]):
        return fragment.release(ids)

    # 2 streams over 5 prompts: requests join a running batch as others finish.
    run = await run_streams(PinnedStepper(step, release), WORK, streams=2, tag="inproc")
    assert run.outputs() == reference
    assert run.steps == 3 * 8  # waves of 2, 2 and 1 requests, 8 steps each
    assert fragment.stats().sequences == 0


@in_module_loop
@pytest.mark.parametrize("mode", ["pinned", "blind-kv", "blind-recompute"])
async def test_worker_modes_match_hf(client, reference, mode: str) -> None:
    stepper = {
        "pinned": PinnedStepper.on_worker(client, FRAG),
        "blind-kv": BlindKVStepper(client, FRAG),
        "blind-recompute": BlindRecomputeStepper(client, FRAG),
    }[mode]
    run = await run_streams(stepper, WORK, streams=3, tag=mode)
    assert run.outputs() == reference
    stats = (await client.stats()).fragment(FRAG)
    assert (stats.sequences, stats.kv_blocks_used) == (0, 0)


async def traffic(client: WorkerClient, stepper, work: Workload) -> tuple[float, int, int]:
    """(bytes per generated token, bytes sent, bytes the worker says it received) of one run."""
    sent, got, seen = client.step_bytes_sent, client.step_bytes_received, (await client.stats()).bytes_received
    run = await run_streams(stepper, work, streams=1, tag=f"bytes-{id(work)}")
    sent, got = client.step_bytes_sent - sent, client.step_bytes_received - got
    return (sent + got) / run.output_tokens, sent, (await client.stats()).bytes_received - seen


@in_module_loop
async def test_blind_kv_bytes_grow_with_context_and_dwarf_pinned(client) -> None:
    short, long = workload((8,), output_len=16), workload((120,), output_len=16)
    pinned_short, _, _ = await traffic(client, PinnedStepper.on_worker(client, FRAG), short)
    pinned_long, _, _ = await traffic(client, PinnedStepper.on_worker(client, FRAG), long)
    blind_short, sent, received_by_worker = await traffic(client, BlindKVStepper(client, FRAG), short)
    blind_long, _, _ = await traffic(client, BlindKVStepper(client, FRAG), long)
    assert sent == received_by_worker  # the client's count and the worker's agree on the serialized bytes
    # Each decode step ships the whole KV both ways: (prompt + generated) tokens x KV bytes per token.
    context_long = sum(120 + i for i in range(1, 16)) * 2 / 16  # mean KV tokens per generated token, both ways
    assert blind_long > 0.95 * context_long * KV_BYTES_PER_TOKEN
    assert blind_long > 5 * blind_short
    assert pinned_long < 2 * pinned_short < 200  # pinned: token ids and a sampled id, whatever the context
    assert blind_short > 100 * pinned_short


def test_blind_kv_requests_are_split_below_the_message_cap() -> None:
    kv = torch.zeros(1000, dtype=torch.uint8)  # 1000 bytes of KV each
    seqs = [BlindSeqStep(f"s{i}", 1, token_ids=[1], kv=kv) for i in range(5)]
    assert [len(c) for c in _chunks(seqs, max_bytes=2500)] == [2, 2, 1]
    assert [len(c) for c in _chunks(seqs, max_bytes=500)] == [1, 1, 1, 1, 1]  # one too-large sequence goes alone
