"""The shared test models are lively: their greedy continuation depends on the whole context, so a test that
runs them through a KV cache fails when the cache holds the wrong keys and values."""

from __future__ import annotations

import torch


def continuation(model, prompt: torch.Tensor, tokens: int = 8) -> list[int]:
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def test_tiny_gpt2_continues_differently_when_only_the_first_of_24_tokens_changes(gpt2_tiny_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt2_tiny_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    changed, varied = 0, 0
    for _ in range(8):
        prompt = torch.randint(0, 1000, (1, 24), generator=g)
        other = prompt.clone()
        other[0, 0] = (other[0, 0] + 1) % 1000
        ours = continuation(model, prompt)
        changed += ours != continuation(model, other)
        varied += len(set(ours)) > 2
    assert changed >= 7, f"only {changed} of 8 continuations depend on the first token"
    assert varied >= 6, f"only {varied} of 8 continuations use more than two distinct tokens"
