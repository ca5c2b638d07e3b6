"""Small model builders for semantic-layer tests (all on the meta device: no weights)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from genie.semantic import skeleton_from_hf_config

GiB = 2**30


def tiny_llama(**overrides):
    kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    kw.update(overrides)
    return skeleton_from_hf_config(LlamaConfig(**kw), seq_len=8)


def meta_tensor(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device="meta")
