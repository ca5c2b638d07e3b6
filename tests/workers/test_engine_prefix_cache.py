"""Prefix caching in the engine on SmolLM2: a sequence that starts from another's cached KV blocks samples the
same tokens, with the same logprobs to the bit, as the same sequence prefilled from scratch (float32 and, with
the batch-invariant kernels, bfloat16). The worker refuses what would break that: a prefix it does not hold, a
prefix for a sequence that already has KV, a wrong position, and penalties that must see every token."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.workers.contract import FragmentSpec, SamplingParams, SeqStep
from genie.workers.engine.linear import InvariantLinear
from genie.workers.engine.loader import load_fragment

BLOCK = 16
LOGPROBS = SamplingParams(logprobs=2)  # greedy; the logprob carries every bit of the chosen logit


def names(prefix: str, count: int) -> tuple[bytes, ...]:
    return tuple(f"{prefix}{i:02d}".encode().ljust(16, b".") for i in range(count))


def decode(frag, seq_id: str, position: int, first: int, steps: int) -> tuple[list[int], list[float]]:
    tokens, logprobs = [first], []
    for _ in range(steps):
        (r,) = frag.step([SeqStep(seq_id, position, token_ids=[tokens[-1]], sample=True, sampling=LOGPROBS)])
        tokens.append(r.token_id)
        logprobs.append(r.logprob)
        position += 1
    return tokens, logprobs


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def frag(request, smollm2_dir):
    spec = FragmentSpec("f", str(smollm2_dir), dtype=request.param, kv_cache_bytes=64 << 20, block_size=BLOCK)
    loaded = load_fragment(spec, "cpu")
    if request.param == "bfloat16" and not isinstance(loaded.model.layers[0].qkv, InvariantLinear):
        pytest.skip("this CPU has no batch-invariant bf16 matmul (native kernels need AVX-512)")
    return loaded


def test_a_sequence_started_from_cached_blocks_matches_one_prefilled_from_scratch(frag) -> None:
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(100, 40000, (6 * BLOCK + 5,), generator=g).tolist()  # 6 full blocks and a bit
    tail = torch.randint(100, 40000, (23,), generator=g).tolist()
    # the first sequence names the 6 full blocks of the shared part as it fills them
    first = frag.step([SeqStep("owner", 0, token_ids=shared, new_block_hashes=names("p", 6))])
    assert first[0].token_id is None and frag.stats().kv_blocks_cached == 6
    prompt = shared[: 6 * BLOCK] + tail
    (scratch,) = frag.step([SeqStep("scratch", 0, token_ids=prompt, sample=True, sampling=LOGPROBS)])
    (cached,) = frag.step([SeqStep("cached", 6 * BLOCK, token_ids=tail, sample=True, sampling=LOGPROBS,
                                   cached_prefix=names("p", 6))])
    assert (cached.token_id, cached.logprob) == (scratch.token_id, scratch.logprob)
    assert frag.stats().kv_blocks_shared == 6
    assert decode(frag, "cached", len(prompt), cached.token_id, 6) == decode(frag, "scratch", len(prompt),
                                                                              scratch.token_id, 6)
    frag.release(["owner", "scratch", "cached"])
    stats = frag.stats()
    assert (stats.kv_blocks_used, stats.kv_blocks_evictable, stats.sequences) == (0, 6, 0)
    assert frag.evict(names("p", 6)) == 6 and frag.stats().kv_blocks_free == stats.kv_blocks_total


def test_the_worker_refuses_a_prefix_it_cannot_honour(frag) -> None:
    ids = list(range(100, 100 + 2 * BLOCK))
    frag.step([SeqStep("held", 0, token_ids=ids, new_block_hashes=names("q", 2))])
    before = frag.stats()
    bad = [
        (SeqStep("x", BLOCK, token_ids=[5], cached_prefix=names("missing", 1)), "not cached"),
        (SeqStep("held", 2 * BLOCK, token_ids=[5], cached_prefix=names("q", 2)), "already holds KV"),
        (SeqStep("x", BLOCK + 1, token_ids=[5], cached_prefix=names("q", 1)), "position"),
        (SeqStep("x", BLOCK, token_ids=[5], cached_prefix=names("q", 1), sample=True,
                 sampling=SamplingParams(repetition_penalty=1.2)), "penalties"),
        (SeqStep("x", 0, token_ids=ids, new_block_hashes=names("r", 1)), "names 1"),
    ]
    for step, words in bad:
        with pytest.raises(InvalidRequest, match=words):
            frag.step([step])
    assert frag.stats() == before  # nothing changed
    frag.release(["held"])
    frag.evict(names("q", 2))
