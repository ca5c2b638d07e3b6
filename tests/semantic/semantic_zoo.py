"""The model zoo for classification tests: tiny transformers configs (random weights on meta) plus models of our
own (DLRM, VQA, the recommenders and the data-dependent model of `zoo_custom`). Each entry: name -> (builder,
expected workload)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from torch import nn
from zoo_custom import AudioCNN, Bert4Rec, MaskedPooling, SASRec, TwoTower, WideDeep

from genie.semantic import skeleton_from_hf_config

TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128,
            max_position_embeddings=64)
LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
PATCHES = dict(**LAYERS, image_size=32, patch_size=8)
WAVE = dict(**LAYERS, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, vocab_size=32)
TOWERS = dict(text_config=dict(**LAYERS, vocab_size=128, max_position_embeddings=16), vision_config=PATCHES,
              projection_dim=16)
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


def _ids(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.long, device="meta")


def _floats(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta")


def _image_to_text() -> tuple[nn.Module, Any]:
    config = tf.VisionEncoderDecoderConfig(
        encoder=tf.ViTConfig(**PATCHES).to_dict(),
        decoder=tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64, is_decoder=True,
                              add_cross_attention=True).to_dict(),
        decoder_start_token_id=0, pad_token_id=0, architectures=["VisionEncoderDecoderModel"])
    return skeleton_from_hf_config(config, seq_len=8)


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
    # decoder-only LMs
    "falcon": (_hf(tf.FalconConfig, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=128), "llm"),
    "gemma": (_hf(tf.GemmaConfig, **TEXT, num_key_value_heads=1, head_dim=16), "llm"),
    "bloom": (_hf(tf.BloomConfig, hidden_size=32, n_layer=2, n_head=2, vocab_size=128), "llm"),
    "gptj": (_hf(tf.GPTJConfig, n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64, rotary_dim=8), "llm"),
    "codegen": (_hf(tf.CodeGenConfig, n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64, n_ctx=64,
                    rotary_dim=8), "llm"),
    "mpt": (_hf(tf.MptConfig, d_model=32, n_layers=2, n_heads=2, vocab_size=128, max_seq_len=64), "llm"),
    "gpt_neo": (_hf(tf.GPTNeoConfig, hidden_size=32, num_layers=2, num_heads=2, vocab_size=128,
                    max_position_embeddings=64, attention_types=[[["global", "local"], 1]], window_size=4), "llm"),
    "qwen3": (_hf(tf.Qwen3Config, **TEXT, num_key_value_heads=1, head_dim=16), "llm"),
    "marian": (_hf(tf.MarianConfig, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128,
                   max_position_embeddings=64, decoder_start_token_id=0, pad_token_id=0), "llm"),
    # text encoders
    "xlm_roberta": (_hf(tf.XLMRobertaConfig, **TEXT), "encoder"),
    "albert": (_hf(tf.AlbertConfig, **TEXT, embedding_size=16), "encoder"),
    "deberta_v2": (_hf(tf.DebertaV2Config, **TEXT), "encoder"),
    "mpnet": (_hf(tf.MPNetConfig, **TEXT), "encoder"),
    # vision
    "beit": (_vision(tf.BeitConfig, **PATCHES), "vision"),
    "dinov2": (_vision(tf.Dinov2Config, **PATCHES), "vision"),
    "efficientnet": (_vision(tf.EfficientNetConfig, image_size=32, width_coefficient=0.25, depth_coefficient=0.25,
                             hidden_dim=320), "vision"),
    "mobilenet_v2": (_vision(tf.MobileNetV2Config, image_size=32, depth_multiplier=0.25), "vision"),
    "levit": (_vision(tf.LevitConfig, image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
                      depths=[1, 1, 1], key_dim=[8, 8, 8]), "vision"),
    "segformer": (_vision(tf.SegformerConfig, image_size=32, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32), "vision"),
    "masked_pooling": (_own(MaskedPooling, lambda: (_floats(1, 3, 32, 32),)), "vision"),  # data-dependent shapes
    # speech and audio
    "hubert": (_hf(tf.HubertConfig, **WAVE), "audio"),
    "data2vec_audio": (_hf(tf.Data2VecAudioConfig, **WAVE), "audio"),
    "wavlm": (_hf(tf.WavLMConfig, **WAVE), "audio"),
    "speech2text": (_hf(tf.Speech2TextConfig, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        vocab_size=128, max_source_positions=64, max_target_positions=32, input_feat_per_channel=16,
                        conv_channels=16, num_conv_layers=2), "audio"),
    "ast": (_vision(tf.ASTConfig, **LAYERS, patch_size=16, num_mel_bins=32, max_length=64), "audio"),
    "audio_cnn": (_own(AudioCNN, lambda: {"mel": _floats(2, 1, 64, 200)}), "audio"),
    # vision-language
    "blip": (_hf(tf.BlipConfig, **TOWERS), "multimodal"),
    "owlvit": (_hf(tf.OwlViTConfig, **TOWERS), "multimodal"),
    "vit_gpt2_captioner": (_image_to_text, "multimodal"),
    # recommenders
    "two_tower": (_own(TwoTower, lambda: (_ids(2), _ids(2, 4), _ids(2), _ids(2))), "recsys"),
    "sasrec": (_own(SASRec, lambda: {"seq": _ids(2, 20), "candidates": _ids(2, 100)}), "recsys"),
    "bert4rec": (_own(Bert4Rec, lambda: {"item_seq": _ids(2, 20)}), "recsys"),
    "wide_deep": (_own(WideDeep, lambda: (_ids(2, 6, 3), _floats(2, 8))), "recsys"),
}
