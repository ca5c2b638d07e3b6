"""Blind mode on a real worker process: sequences that carry their whole KV in and out of every step.

The semantic-blind baselines of `genie-bench compare` must compute exactly what genie-serve computes, or
their speed and traffic would mean nothing: blind-kv (the KV travels with every step) and blind-recompute
(no KV kept, the whole context re-run each step) give the pinned-KV path's greedy tokens and logprobs on
the tiny GPT-2. Bad KV is refused with INVALID_ARGUMENT and leaves no sequence or block behind.
"""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
import torch

from genie.auth import link_metadata
from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers import codec
from genie.workers.client import WorkerClient
from genie.workers.blind import BlindSeqResult, BlindSeqStep
from genie.workers.contract import FragmentSpec, SamplingParams, SeqResult, SeqStep

pytestmark = pytest.mark.asyncio(loop_scope="module")

FRAG = "blind"
NEW_TOKENS = 12
PROMPTS = [[5, 17, 300, 42, 9, 800, 3], [77] * 20 + [1, 2, 3], [999, 0, 500]]
LOGPROBS = SamplingParams(logprobs=5)  # greedy, with the top-5 logprobs: they see every layer's KV


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(cpu_worker, gpt2_tiny_dir):
    async with WorkerClient(cpu_worker.address, timeout=60, token=cpu_worker.token) as c:
        spec = FragmentSpec(FRAG, str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=2 << 20, block_size=16)
        await c.load_fragment(spec)
        yield c


async def pinned(c: WorkerClient, tag: str) -> list[list[SeqResult]]:
    ids = [f"{tag}-{i}" for i in range(len(PROMPTS))]
    steps = [SeqStep(sid, 0, token_ids=p, sample=True, sampling=LOGPROBS) for sid, p in zip(ids, PROMPTS)]
    out: list[list[SeqResult]] = [[] for _ in PROMPTS]
    for _ in range(NEW_TOKENS):
        results = await c.step(FRAG, steps)
        for i, r in enumerate(results):
            out[i].append(r)
        steps = [SeqStep(s.seq_id, s.position + s.num_tokens, token_ids=[r.token_id], sample=True, sampling=LOGPROBS)
                 for s, r in zip(steps, results)]
    await c.release(FRAG, ids)
    return out


async def blind_kv(c: WorkerClient, tag: str, corrupt: bool = False) -> list[list[SeqResult]]:
    ids = [f"{tag}-{i}" for i in range(len(PROMPTS))]
    steps = [BlindSeqStep(sid, 0, token_ids=p, sample=True, sampling=LOGPROBS, return_kv=True)
             for sid, p in zip(ids, PROMPTS)]
    out: list[list[SeqResult]] = [[] for _ in PROMPTS]
    for _ in range(NEW_TOKENS):
        results = await c.step(FRAG, steps)
        for i, r in enumerate(results):
            out[i].append(r)
        steps = [BlindSeqStep(s.seq_id, s.position + s.num_tokens, token_ids=[r.token_id], sample=True, sampling=LOGPROBS,
                         kv=torch.zeros_like(r.kv) if corrupt else r.kv, return_kv=True)
                 for s, r in zip(steps, results)]
    return out


async def blind_recompute(c: WorkerClient, tag: str) -> list[list[SeqResult]]:
    contexts = [list(p) for p in PROMPTS]
    out: list[list[SeqResult]] = [[] for _ in PROMPTS]
    for step in range(NEW_TOKENS):
        ids = [f"{tag}-{step}-{i}" for i in range(len(PROMPTS))]
        results = await c.step(FRAG, [SeqStep(sid, 0, token_ids=ctx, sample=True, sampling=LOGPROBS)
                                      for sid, ctx in zip(ids, contexts)])
        await c.release(FRAG, ids)
        for i, r in enumerate(results):
            out[i].append(r)
            contexts[i].append(r.token_id)
    return out


def tokens(runs: list[list[SeqResult]]) -> list[list[int]]:
    return [[r.token_id for r in run] for run in runs]


def top_logprobs(runs: list[list[SeqResult]]) -> torch.Tensor:
    return torch.tensor([[[lp for _, lp in r.top] for r in run] for run in runs])


async def assert_empty(c: WorkerClient) -> None:
    stats = (await c.stats()).fragment(FRAG)
    assert (stats.sequences, stats.kv_blocks_used) == (0, 0)


async def test_blind_kv_and_recompute_match_pinned(client) -> None:
    reference = await pinned(client, "pinned")
    kv = await blind_kv(client, "kv")
    recompute = await blind_recompute(client, "re")
    assert tokens(kv) == tokens(reference)
    assert tokens(recompute) == tokens(reference)
    # The same decode math on the same KV: bit for bit. Recompute runs prefill kernels instead: fp32 rounding.
    assert torch.equal(top_logprobs(kv), top_logprobs(reference))
    torch.testing.assert_close(top_logprobs(recompute), top_logprobs(reference), atol=1e-4, rtol=0)
    await assert_empty(client)


async def test_the_carried_kv_is_what_the_step_attends_to(client) -> None:
    reference = await pinned(client, "pinned2")
    zeroed = await blind_kv(client, "zeroed", corrupt=True)
    assert not torch.allclose(top_logprobs(zeroed)[:, 1:], top_logprobs(reference)[:, 1:], atol=1e-3)
    await assert_empty(client)


async def test_returned_kv_has_the_documented_shape_and_bytes_grow_with_context(client) -> None:
    step = BlindSeqStep("shape", 0, token_ids=PROMPTS[0], sample=True, return_kv=True)
    kv = (await client.step(FRAG, [step]))[0].kv
    assert kv.shape == (4, 2, len(PROMPTS[0]), 4, 32) and kv.dtype == torch.float32  # GPT-2 tiny: 4 layers, 4 heads
    sizes = []
    for n in range(3):
        position = len(PROMPTS[0]) + n
        result = (await client.step(FRAG, [BlindSeqStep("shape", position, token_ids=[1], sample=True, kv=kv,
                                                   return_kv=True)]))[0]
        kv = result.kv
        sizes.append(client.last_step_bytes)
        assert kv.shape[2] == position + 1
    per_token = 4 * 2 * 4 * 32 * 4  # bytes of one token's K and V over all layers
    for (sent_a, got_a), (sent_b, got_b) in zip(sizes, sizes[1:]):
        assert sent_b - sent_a == per_token and got_b - got_a == per_token
    await assert_empty(client)


async def test_pinned_and_blind_sequences_share_a_step(client) -> None:
    reference = tokens(await pinned(client, "alone"))[0]
    first = await client.step(FRAG, [SeqStep("mix-p", 0, token_ids=PROMPTS[0], sample=True),
                                     BlindSeqStep("mix-b", 0, token_ids=PROMPTS[0], sample=True, return_kv=True)])
    assert [r.seq_id for r in first] == ["mix-p", "mix-b"] and not isinstance(first[0], BlindSeqResult)
    second = await client.step(FRAG, [SeqStep("mix-p", len(PROMPTS[0]), token_ids=[first[0].token_id], sample=True),
                                      BlindSeqStep("mix-b", len(PROMPTS[0]), token_ids=[first[1].token_id], sample=True,
                                              kv=first[1].kv)])
    assert [first[0].token_id, second[0].token_id] == reference[:2]
    assert [first[1].token_id, second[1].token_id] == reference[:2]
    stats = (await client.stats()).fragment(FRAG)
    assert stats.sequences == 1  # the pinned one; the blind one was forgotten
    await client.release(FRAG, ["mix-p"])
    await assert_empty(client)


def good_kv(tokens: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(4, 2, tokens, 4, 32).to(dtype)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (BlindSeqStep("bad", 5, token_ids=[1], kv=good_kv(5)[:3]), "kv must be [layers, 2, position, kv_heads, head_dim]"),
        (BlindSeqStep("bad", 5, token_ids=[1], kv=good_kv(5, torch.bfloat16)), "in float32"),
        (BlindSeqStep("bad", 5, token_ids=[1], kv=good_kv(4)), "[4, 2, 5, 4, 32]"),
        (BlindSeqStep("bad", 5, token_ids=[1], kv=good_kv(5).transpose(3, 4)), "got [4, 2, 5, 32, 4]"),
        (BlindSeqStep("bad", 3, token_ids=[1], return_kv=True), "brings no kv"),
        (BlindSeqStep("bad", 5, token_ids=[1000], kv=good_kv(5)), "outside the vocabulary"),
        (BlindSeqStep("bad", 510, token_ids=[1, 2, 3], kv=good_kv(510)), "context limit"),
    ],
)
async def test_bad_kv_is_refused_and_leaves_nothing_behind(client, step: SeqStep, message: str) -> None:
    await client.step(FRAG, [SeqStep("held", 0, token_ids=[1, 2, 3])])
    with pytest.raises(InvalidRequest) as caught:
        await client.step(FRAG, [SeqStep("held", 3, token_ids=[4]), step])
    assert message in str(caught.value)
    stats = (await client.stats()).fragment(FRAG)
    assert (stats.sequences, stats.kv_blocks_used) == (1, 1)  # "held" only, still at 3 tokens
    await client.step(FRAG, [SeqStep("held", 3, token_ids=[4])])
    await client.release(FRAG, ["held"])
    await assert_empty(client)


async def test_bad_kv_gets_invalid_argument_on_the_wire(cpu_worker, client) -> None:
    msg = codec.seq_step_to_pb(BlindSeqStep("torn", 5, token_ids=[1], kv=good_kv(5)))
    msg.kv.data = msg.kv.data[:-4]
    async with grpc.aio.insecure_channel(cpu_worker.address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            request = pb.StepRequest(fragment_id=FRAG, seqs=[msg])
            await stub.Step(request, metadata=link_metadata(cpu_worker.token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kv of sequence 'torn' carries" in caught.value.details()
    await assert_empty(client)


async def test_blind_kv_beyond_the_cache_is_refused_whole(client) -> None:
    blocks = (await client.stats()).fragment(FRAG).kv_blocks_total
    too_long = [BlindSeqStep(f"big-{i}", 300, token_ids=[1], kv=good_kv(300), return_kv=True) for i in range(3)]
    assert 3 * 19 > blocks  # three sequences of 301 tokens need 19 blocks of 16 each
    with pytest.raises(ResourceExhausted, match="send fewer sequences per step"):
        await client.step(FRAG, too_long)
    await assert_empty(client)


async def test_a_failed_blind_step_releases_its_temporary_sequences(client) -> None:
    # The blind sequence passes its own checks; the pinned one is unknown, so the engine refuses the step.
    with pytest.raises(NotFound):
        await client.step(FRAG, [BlindSeqStep("blind-ok", 5, token_ids=[1], kv=good_kv(5), return_kv=True),
                                 SeqStep("never-started", 7, token_ids=[1])])
    await assert_empty(client)
