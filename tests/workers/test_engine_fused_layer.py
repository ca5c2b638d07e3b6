"""The one-call decoder layer (native_layer.cpp): on a tiny random Llama, a mixed step of prefill chunks and decodes
gives the same tokens and the same logprob bits through `llama_layer` as through the same kernels called one by
one from Python (NativeKernels.fuse_layers = False), in bf16 and fp32, with and without q/k/v biases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genie.workers.contract import FragmentSpec, SamplingParams, SeqStep
from genie.workers.engine.loader import load_fragment

LOGPROBS = SamplingParams(logprobs=3)


def tiny_llama(out: Path, bias: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, attention_bias=bias, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def run(model_dir: Path, dtype: str, fused: bool) -> tuple[list[list[int]], list[list[float]], int]:
    """Three prompts: two prefilled whole, one in chunks of 5 beside the others' decodes; 6 tokens each.
    Returns the tokens, logprobs and how many layer calls went through the one-call op."""
    spec = FragmentSpec("f", str(model_dir), dtype=dtype, kv_cache_bytes=8 << 20, block_size=16)
    frag = load_fragment(spec, "cpu", kernels="native")
    if frag.model.layers[0].fused is None:
        pytest.skip(f"no one-call native layer for {dtype} on this CPU (it needs AVX-512, bf16 AVX512-BF16)")
    kernels = frag.model.layers[0].kernels
    kernels.fuse_layers = fused
    calls = [0]
    layer_op = kernels.decoder_layer

    def counted(*args):
        calls[0] += 1
        return layer_op(*args)

    kernels.decoder_layer = counted
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (9, 23, 17)]
    ids, pos = ["a", "b", "c"], [0, 0, 0]
    tokens, logprobs = [[], [], []], [[], [], []]
    pending = {2: list(prompts[2])}
    first = frag.step([SeqStep(ids[i], 0, prompts[i], sample=True, sampling=LOGPROBS) for i in (0, 1)])
    for i, r in zip((0, 1), first):
        tokens[i].append(r.token_id)
        logprobs[i].append(r.logprob)
        pos[i] = len(prompts[i])
    while min(len(t) for t in tokens) < 6:
        steps, who = [], []
        for i in range(3):
            if i in pending:
                chunk, pending[i] = pending[i][:5], pending[i][5:]
                steps.append(SeqStep(ids[i], pos[i], chunk, sample=not pending[i], sampling=LOGPROBS))
                pos[i] += len(chunk)
                if not pending[i]:
                    del pending[i]
            elif len(tokens[i]) < 6:
                steps.append(SeqStep(ids[i], pos[i], [tokens[i][-1]], sample=True, sampling=LOGPROBS))
                pos[i] += 1
            else:
                continue
            who.append(i)
        for i, r in zip(who, frag.step(steps)):
            if r.token_id is not None:
                tokens[i].append(r.token_id)
                logprobs[i].append(r.logprob)
    return tokens, logprobs, calls[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("bias", [False, True])
def test_the_one_call_layer_gives_the_bits_of_the_kernels_called_one_by_one(tmp_path, dtype, bias) -> None:
    model = tiny_llama(tmp_path / "tiny", bias)
    tokens, logprobs, fused_calls = run(model, dtype, fused=True)
    ref_tokens, ref_logprobs, ref_calls = run(model, dtype, fused=False)
    assert fused_calls > 0 and ref_calls == 0  # the op really ran, and the reference really did not use it
    assert len({t for row in tokens for t in row}) > 3  # a lively model: the comparison sees varied tokens
    assert tokens == ref_tokens
    assert logprobs == ref_logprobs  # exact: the same bits
