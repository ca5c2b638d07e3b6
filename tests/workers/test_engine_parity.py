"""Our engine against transformers, fp32, same weights: greedy tokens identical, whole and split, chunked."""

from __future__ import annotations

import pytest
import torch
from test_engine_support import Pipeline, first_divergence, generate, hf_greedy, kernels  # noqa: F401 (fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment

NEW_TOKENS = 64
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one paragraph what a KV cache is in a transformer.",
    "List three prime numbers and say why each is prime.",
    "How do I reverse a list in Python?",
]


def spec(model_dir, fid: str, **kw) -> FragmentSpec:
    return FragmentSpec(fid, str(model_dir), dtype="float32", kv_cache_bytes=64 << 20, **kw)


def hf_model(model_dir) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def gpt2_prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (5, 17, 33, 1, 60)]


@pytest.fixture(scope="module")
def gpt2_reference(gpt2_tiny_dir, gpt2_prompts) -> list[list[int]]:
    model = hf_model(gpt2_tiny_dir)
    return [hf_greedy(model, p, NEW_TOKENS) for p in gpt2_prompts]


def test_gpt2_greedy_matches_transformers(gpt2_tiny_dir, gpt2_prompts, gpt2_reference, kernels):
    frag = load_fragment(spec(gpt2_tiny_dir, "g"), kernels=kernels)
    assert frag.kernels == kernels
    assert generate(frag, gpt2_prompts, NEW_TOKENS) == gpt2_reference
    assert frag.stats().kv_blocks_used == 0


def test_gpt2_logprobs_match_transformers_every_step(gpt2_tiny_dir, gpt2_prompts):
    """Random-init GPT-2 repeats tokens, so tokens alone prove little: compare the top-5 logprobs per step."""
    model, frag = hf_model(gpt2_tiny_dir), load_fragment(spec(gpt2_tiny_dir, "g"))
    ids = list(gpt2_prompts[2])
    top5 = SamplingParams(logprobs=5)
    chunk = ids
    for step in range(12):
        [res] = frag.step([SeqStep("a", len(ids) - len(chunk), chunk, sample=True, sampling=top5)])
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
        values, order = ref.topk(5)
        assert [t for t, _ in res.top] == order.tolist(), f"step {step}"
        torch.testing.assert_close(torch.tensor([v for _, v in res.top]), values, atol=1e-4, rtol=0)
        assert res.token_id == order[0] and res.logprob == pytest.approx(values[0].item(), abs=1e-4)
        ids.append(res.token_id)
        chunk = [res.token_id]


def test_gpt2_split_in_two_fragments_matches(gpt2_tiny_dir, gpt2_prompts, gpt2_reference):
    first = load_fragment(spec(gpt2_tiny_dir, "g0", layer_end=1, has_head=False), kernels="auto")
    second = load_fragment(spec(gpt2_tiny_dir, "g1", layer_start=1, has_embedding=False), kernels="torch")
    assert (first.info.num_layers, second.info.num_layers) == (1, 3)
    assert generate(Pipeline([first, second]), gpt2_prompts, NEW_TOKENS) == gpt2_reference


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_gpt2_chunked_prefill_matches_one_shot(gpt2_tiny_dir, gpt2_prompts, gpt2_reference, chunk, kernels):
    frag = load_fragment(spec(gpt2_tiny_dir, "g"), kernels=kernels)
    assert generate(frag, gpt2_prompts, NEW_TOKENS, chunk=chunk) == gpt2_reference


@pytest.fixture(scope="module")
def smol_prompts(smollm2_dir) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    return [list(tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False)) for c in chats]


@pytest.fixture(scope="module")
def smol_reference(smollm2_dir, smol_prompts) -> list[list[int]]:
    model = hf_model(smollm2_dir)
    return [hf_greedy(model, p, NEW_TOKENS) for p in smol_prompts]


@pytest.fixture(scope="module")
def smol_fragment(smollm2_dir):
    return load_fragment(spec(smollm2_dir, "smol"), kernels="torch")  # test_engine_native covers "native"


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smol_fragment, smol_prompts, smol_reference):
    ours = generate(smol_fragment, smol_prompts, NEW_TOKENS)
    for i, (a, b) in enumerate(zip(ours, smol_reference)):
        assert a == b, f"prompt {i} diverges at token {first_divergence(a, b)}"


@pytest.mark.slow
def test_smollm2_split_in_two_fragments_with_chunked_prefill_matches(smollm2_dir, smol_prompts, smol_reference):
    """Two fragments in one process, hidden states passed between, prompts prefilled 8 tokens at a time."""
    first = load_fragment(spec(smollm2_dir, "s0", layer_end=13, has_head=False), kernels="auto")
    second = load_fragment(spec(smollm2_dir, "s1", layer_start=13, has_embedding=False), kernels="torch")
    assert first.info.num_layers + second.info.num_layers == 30
    assert generate(Pipeline([first, second]), smol_prompts, NEW_TOKENS, chunk=8) == smol_reference
