"""A model split across TWO real worker processes gives HF transformers' greedy output, token for token.

Worker A holds the embedding and layers [0, k); worker B holds layers [k, n) and the head. The test drives
Step on A and hands A's hidden states to B through WorkerClient, exactly as the router will. All prompts
run as one batch (mixed lengths in prefill, then batched decode).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import spawn_worker

pytestmark = pytest.mark.asyncio(loop_scope="module")

NEW_TOKENS = 64
SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Write a haiku about the sea.",
    "Q: What is 12 times 7?\nA:",
    "Once upon a time, in a small village at the edge of a dark forest, there lived",
]


@dataclass(frozen=True)
class Reference:
    tokens: list[list[int]]  # per prompt, the NEW_TOKENS greedy tokens
    gaps: list[list[float]]  # per prompt and step, top-1 minus top-2 logit: tells a near-tie from a bug


def hf_greedy(model_dir: Path, prompts: list[list[int]]) -> Reference:
    """HF transformers' own greedy decode (fp32, KV cache), one prompt at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    all_tokens, all_gaps = [], []
    threads = torch.get_num_threads()
    # One thread: the two workers share these 2 cores, and oversubscribed decode steps run ~5x slower.
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for prompt in prompts:
                tokens, gaps = _greedy_one(model, prompt)
                all_tokens.append(tokens)
                all_gaps.append(gaps)
    finally:
        torch.set_num_threads(threads)
    return Reference(all_tokens, all_gaps)


def _greedy_one(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], list[float]]:
    ids, past, tokens, gaps = torch.tensor([prompt]), None, [], []
    for _ in range(NEW_TOKENS):
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        logits, past = out.logits[0, -1], out.past_key_values
        top2 = logits.topk(2).values
        tokens.append(int(logits.argmax()))
        gaps.append(float(top2[0] - top2[1]))
        ids = torch.tensor([[tokens[-1]]])
    return tokens, gaps


async def split_greedy(a: WorkerClient, b: WorkerClient, tag: str, prompts: list[list[int]]) -> list[list[int]]:
    """Batched greedy decode through fragment `{tag}-a` on worker A and `{tag}-b` on worker B."""
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    pending = {sid: list(p) for sid, p in zip(ids, prompts, strict=True)}  # tokens not yet in the KV
    position = dict.fromkeys(ids, 0)
    out: dict[str, list[int]] = {sid: [] for sid in ids}
    for _ in range(NEW_TOKENS):
        hidden = await a.step(f"{tag}-a", [SeqStep(sid, position[sid], token_ids=pending[sid]) for sid in ids])
        assert all(r.token_id is None and r.hidden is not None for r in hidden)
        steps = [SeqStep(r.seq_id, position[r.seq_id], hidden=r.hidden, sample=True) for r in hidden]
        for result in await b.step(f"{tag}-b", steps):
            position[result.seq_id] += len(pending[result.seq_id])
            out[result.seq_id].append(result.token_id)
            pending[result.seq_id] = [result.token_id]
    assert await a.release(f"{tag}-a", ids) == len(ids)
    assert await b.release(f"{tag}-b", ids) == len(ids)
    return [out[sid] for sid in ids]


def assert_same_tokens(ours: list[list[int]], ref: Reference) -> None:
    for i, (got, want) in enumerate(zip(ours, ref.tokens, strict=True)):
        if got != want:
            step = next(j for j, (x, y) in enumerate(zip(got, want)) if x != y)
            pytest.fail(
                f"prompt {i} diverges from HF at new token {step}: ours {got[step]}, HF {want[step]} "
                f"(HF's top-2 logit gap there: {ref.gaps[i][step]:.2e})"
            )


@pytest.fixture(scope="module")
def workers():
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: spawn_worker(device="cpu", threads=1), range(2))
    yield a, b
    assert a.alive() and b.alive(), "a worker died during the tests"
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda w: w.stop(), (a, b))) == [0, 0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clients(workers):
    a, b = (WorkerClient(w.address, timeout=120, token=w.token) for w in workers)
    yield a, b
    await a.close()
    await b.close()


async def load_split(clients, tag: str, model_dir: Path, k: int) -> None:
    a, b = clients
    head = FragmentSpec(f"{tag}-a", str(model_dir), 0, k, has_embedding=True, has_head=False,
                        dtype="float32", kv_cache_bytes=64 << 20)
    tail = FragmentSpec(f"{tag}-b", str(model_dir), k, -1, has_embedding=False, has_head=True,
                        dtype="float32", kv_cache_bytes=64 << 20)
    info_a = await a.load_fragment(head)
    info_b = await b.load_fragment(tail)
    assert info_a.dtype == info_b.dtype == "float32"
    assert info_a.hidden_size == info_b.hidden_size


async def test_gpt2_split_matches_hf(gpt2_tiny_dir, clients) -> None:
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (3, 9, 17, 1, 30)]
    await load_split(clients, "gpt2", gpt2_tiny_dir, k=2)
    a, b = clients
    before_a, before_b = await a.stats(), await b.stats()
    sent_before, received_before = b.step_bytes_sent, b.step_bytes_received
    ours = await split_greedy(a, b, "gpt2", prompts)
    assert_same_tokens(ours, hf_greedy(gpt2_tiny_dir, prompts))
    assert len({token for tokens in ours for token in tokens}) > 3  # not a degenerate repeat of one token

    stats_a, stats_b = await a.stats(), await b.stats()
    assert stats_a.fragment("gpt2-a").kv_blocks_used == 0  # released
    assert stats_a.steps - before_a.steps == stats_b.steps - before_b.steps == NEW_TOKENS
    assert stats_b.tokens - before_b.tokens == sum(map(len, prompts)) + 5 * (NEW_TOKENS - 1)
    # The worker counts exactly the bytes the client sent and got back on this link.
    assert stats_b.bytes_received - before_b.bytes_received == b.step_bytes_sent - sent_before
    assert stats_b.bytes_sent - before_b.bytes_sent == b.step_bytes_received - received_before
    # B gets hidden states and answers with one token per sequence.
    assert stats_b.bytes_sent - before_b.bytes_sent < stats_b.bytes_received - before_b.bytes_received


@pytest.mark.slow
async def test_smollm2_split_matches_hf(smollm2_dir, clients) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompts = [tokenizer(p)["input_ids"] for p in SMOLLM2_PROMPTS]
    await load_split(clients, "smol", smollm2_dir, k=13)
    ours = await split_greedy(*clients, "smol", prompts)
    assert_same_tokens(ours, hf_greedy(smollm2_dir, prompts))
    a, b = clients
    await a.unload_fragment("smol-a")
    await b.unload_fragment("smol-b")
