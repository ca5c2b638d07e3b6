"""The model zoo for classification tests: tiny transformers configs (random weights on meta) plus two models
of our own (DLRM-style recsys, VQA-style multimodal). Each entry: name -> (builder, expected workload)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from torch import nn

from genie.semantic import skeleton_from_hf_config

TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128,
            max_position_embeddings=64)
Builder = Callable[[], tuple[nn.Module, Any]]


def _hf(config_cls: type, **kw: Any) -> Builder:
    return lambda: skeleton_from_hf_config(config_cls(**kw), seq_len=8)


def _vision(config_cls: type, **kw: Any) -> Builder:
    def build() -> tuple[nn.Module, Any]:
        model, inputs = skeleton_from_hf_config(config_cls(**kw))
        return model, inputs
    return build


class DLRM(nn.Module):
    """DLRM-style: dense features through a bottom MLP, sparse ids through EmbeddingBag tables, dot interaction,
    top MLP. dense: [B, 13] float; sparse: [B, tables, bag] int64."""

    def __init__(self, tables: int = 8, rows: int = 1000, dim: int = 16) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU())
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(tables))
        pairs = (tables + 1) * tables // 2
        self.top = nn.Sequential(nn.Linear(dim + pairs, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)  # [B, dim]
        pooled = [emb(sparse[:, i]) for i, emb in enumerate(self.embeddings)]  # each [B, dim]
        feats = torch.stack([x, *pooled], dim=1)  # [B, 1 + tables, dim]
        inter = feats @ feats.transpose(1, 2)  # [B, T, T]
        rows, cols = torch.triu_indices(feats.shape[1], feats.shape[1], offset=1)
        flat = inter[:, rows, cols]
        return torch.sigmoid(self.top(torch.cat([x, flat], dim=1)))


class VQA(nn.Module):
    """VQA-style: a small CNN over the image, an embedding + GRU-free text encoder over the question,
    fused by elementwise product, then an answer classifier. image: [B, 3, 32, 32]; question: [B, 12] int64."""

    def __init__(self, vocab: int = 500, dim: int = 64, answers: int = 100) -> None:
        super().__init__()
        self.vision = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, dim),
        )
        self.embed = nn.Embedding(vocab, dim)
        self.text = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.classifier = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, answers))

    def forward(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        v = self.vision(image)  # [B, dim]
        t = self.text(self.embed(question)).mean(dim=1)  # [B, dim]
        return self.classifier(v * t)


def _own(model_cls: type, inputs: Callable[[], Any]) -> Builder:
    def build() -> tuple[nn.Module, Any]:
        with torch.device("meta"):
            model = model_cls()
        return model, inputs()
    return build


ZOO: dict[str, tuple[Builder, str]] = {
    "gpt2": (_hf(tf.GPT2Config, n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64), "llm"),
    "llama": (_hf(tf.LlamaConfig, **TEXT, num_key_value_heads=1), "llm"),
    "mistral": (_hf(tf.MistralConfig, **TEXT, num_key_value_heads=1, sliding_window=16), "llm"),
    "qwen2": (_hf(tf.Qwen2Config, **TEXT, num_key_value_heads=1), "llm"),
    "phi": (_hf(tf.PhiConfig, **TEXT), "llm"),
    "gpt_neox": (_hf(tf.GPTNeoXConfig, **TEXT), "llm"),
    "opt": (_hf(tf.OPTConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                vocab_size=128, max_position_embeddings=64, word_embed_proj_dim=32), "llm"),
    "t5": (_hf(tf.T5Config, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, vocab_size=128), "llm"),
    "bart": (_hf(tf.BartConfig, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128,
                 max_position_embeddings=64), "llm"),
    "bert": (_hf(tf.BertConfig, **TEXT), "encoder"),
    "roberta": (_hf(tf.RobertaConfig, **TEXT), "encoder"),
    "distilbert": (_hf(tf.DistilBertConfig, dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=128,
                       max_position_embeddings=64), "encoder"),
    "electra": (_hf(tf.ElectraConfig, **TEXT, embedding_size=32), "encoder"),
    "vit": (_vision(tf.ViTConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8), "vision"),
    "deit": (_vision(tf.DeiTConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, image_size=32, patch_size=8), "vision"),
    "swin": (_vision(tf.SwinConfig, image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                     window_size=4), "vision"),
    "convnext": (_vision(tf.ConvNextConfig, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32), "vision"),
    "resnet": (_vision(tf.ResNetConfig, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                       layer_type="basic"), "vision"),
    "regnet": (_vision(tf.RegNetConfig, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                       groups_width=8), "vision"),
    "clip": (_hf(tf.CLIPConfig, text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=64, vocab_size=128, max_position_embeddings=16),
                 vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8), projection_dim=16),
             "multimodal"),
    "siglip": (_hf(tf.SiglipConfig, text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=64, vocab_size=128,
                                                      max_position_embeddings=16),
                   vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, image_size=32, patch_size=8)), "multimodal"),
    "whisper": (_hf(tf.WhisperConfig, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128,
                    num_mel_bins=16, max_source_positions=32, max_target_positions=32, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "audio"),
    "wav2vec2": (_hf(tf.Wav2Vec2Config, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=32), "audio"),
    "dlrm": (_own(DLRM, lambda: (torch.zeros(2, 13, device="meta"),
                                 torch.zeros(2, 8, 3, dtype=torch.long, device="meta"))), "recsys"),
    "vqa": (_own(VQA, lambda: {"image": torch.zeros(1, 3, 32, 32, device="meta"),
                               "question": torch.zeros(1, 12, dtype=torch.long, device="meta")}), "multimodal"),
}
