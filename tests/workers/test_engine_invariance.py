"""Batch invariance of the engine on SmolLM2 (bf16 and fp32): 10 prompts of mixed lengths, greedy, each run
alone in one prefill and then all together with every prompt prefilled in 7-token chunks sharing steps. With the
batch-invariant kernels (the default) every token and every logprob is the same bits; the batch-dependent
kernels (batch_invariant=False: oneDNN and a batch-1 matrix-vector kernel, SDPA for prefill) do not give that,
which is what this test would catch if the guarantee broke."""

from __future__ import annotations

import itertools

import pytest
import torch

from genie.workers.contract import FragmentSpec, SamplingParams, SeqStep
from genie.workers.engine.linear import InvariantLinear
from genie.workers.engine.loader import load_fragment

pytestmark = pytest.mark.slow

STEPS = 8
LOGPROBS = SamplingParams(logprobs=2)  # greedy, with logprobs: they carry every bit of the chosen logit
_ids = itertools.count()


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 90, (10,), generator=g).tolist()
    return [torch.randint(100, 40000, (n,), generator=g).tolist() for n in lengths]


def generate(frag, batch: list[list[int]], chunk: int) -> tuple[list[list[int]], list[list[float]]]:
    """Prefill every prompt `chunk` tokens a step (all prompts' chunks in the same steps), then decode."""
    ids = [f"s{next(_ids)}" for _ in batch]
    pos, tokens, logprobs = [0] * len(ids), [[] for _ in ids], [[] for _ in ids]
    pending = [list(p) for p in batch]
    while any(pending):
        steps = []
        for i, rest in enumerate(pending):
            if rest:
                take, pending[i] = rest[:chunk], rest[chunk:]
                steps.append((i, SeqStep(ids[i], pos[i], token_ids=take, sample=not pending[i], sampling=LOGPROBS)))
                pos[i] += len(take)
        for (i, _), r in zip(steps, frag.step([s for _, s in steps])):
            if r.token_id is not None:
                tokens[i].append(r.token_id)
                logprobs[i].append(r.logprob)
    for _ in range(STEPS - 1):
        steps = [SeqStep(ids[i], pos[i], token_ids=[tokens[i][-1]], sample=True, sampling=LOGPROBS)
                 for i in range(len(ids))]
        for i, r in enumerate(frag.step(steps)):
            tokens[i].append(r.token_id)
            logprobs[i].append(r.logprob)
            pos[i] += 1
    frag.release(ids)
    return tokens, logprobs


def alone_and_together(smollm2_dir, dtype: str, invariant: bool):
    spec = FragmentSpec("f", str(smollm2_dir), dtype=dtype, kv_cache_bytes=128 << 20, block_size=16)
    frag = load_fragment(spec, "cpu", kernels="auto", batch_invariant=invariant)
    if invariant and not isinstance(frag.model.layers[0].qkv, InvariantLinear):
        pytest.skip(f"this CPU has no batch-invariant {dtype} matmul (native kernels need AVX-512)")
    alone = [generate(frag, [p], chunk=10**6) for p in prompts()]
    tokens, logprobs = generate(frag, prompts(), chunk=7)
    return [a[0][0] for a in alone], [a[1][0] for a in alone], tokens, logprobs


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_every_token_and_logprob_is_the_same_alone_and_batched_and_chunked(smollm2_dir, dtype) -> None:
    alone_tokens, alone_logprobs, tokens, logprobs = alone_and_together(smollm2_dir, dtype, invariant=True)
    assert tokens == alone_tokens
    assert logprobs == alone_logprobs  # exact: the same bits, not close


def test_the_batch_dependent_kernels_do_change_the_logprobs(smollm2_dir) -> None:
    """The contrast that makes the test above meaningful: on the kernels it replaces, batching moves bits."""
    *_, alone_logprobs, _, logprobs = alone_and_together(smollm2_dir, "bfloat16", invariant=False)
    assert logprobs != alone_logprobs
