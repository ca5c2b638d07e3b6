"""Tiny random-weight HF folders, as `save_pretrained` writes them, for tests that serve a plain HF folder.

Each builder seeds torch, builds the model from a small config (it loads in well under a second) and saves it
with safetensors weights; `bert` also saves a WordPiece tokenizer built offline (no hub)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "a", "cat", "sat", "on", "mat", ",", "."]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
IMAGE = 32  # pixels a side for the vision models
MEL_BINS, AUDIO_POSITIONS = 16, 20  # Whisper takes [N, 16, 40] features


def wordpiece(folder: Path) -> None:
    """A BERT-style tokenizer over WORDS: lower-cased, [CLS] text [SEP], [PAD] = 0."""
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                               sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)


def vit() -> tf.PreTrainedModel:
    return tf.ViTForImageClassification(tf.ViTConfig(image_size=IMAGE, patch_size=8, num_labels=5, **TINY))


def convnext() -> tf.PreTrainedModel:
    config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=IMAGE, num_labels=4)
    return tf.ConvNextForImageClassification(config)


def bert() -> tf.PreTrainedModel:
    return tf.BertModel(tf.BertConfig(vocab_size=len(WORDS), max_position_embeddings=64, **TINY))


def distilbert() -> tf.PreTrainedModel:
    config = tf.DistilBertConfig(vocab_size=len(WORDS), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                 max_position_embeddings=64)
    return tf.DistilBertModel(config)


def clip() -> tf.PreTrainedModel:
    text = {"vocab_size": len(WORDS), "max_position_embeddings": 16, "bos_token_id": 2, "eos_token_id": 3,
            "pad_token_id": 0, **TINY}
    vision = {"image_size": IMAGE, "patch_size": 8, **TINY}
    return tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def whisper() -> tf.PreTrainedModel:
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
    config = tf.WhisperConfig(num_mel_bins=MEL_BINS, max_source_positions=AUDIO_POSITIONS, d_model=32,
                              encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                              decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=32, num_labels=3,
                              classifier_proj_size=16, **ids)
    return tf.WhisperForAudioClassification(config)


BUILDERS: dict[str, Callable[[], tf.PreTrainedModel]] = {
    "vit": vit, "convnext": convnext, "bert": bert, "distilbert": distilbert, "clip": clip, "whisper": whisper,
}
WITH_TOKENIZER = {"bert"}  # distilbert goes without one: it is served as tensors (input_ids, attention_mask)


def save_folder(name: str, root: Path, seed: int = 0) -> Path:
    """BUILDERS[name] with seeded random weights saved under root/name; the folder."""
    torch.manual_seed(seed)
    folder = root / name
    BUILDERS[name]().save_pretrained(folder, safe_serialization=True)
    if name in WITH_TOKENIZER:
        wordpiece(folder)
    return folder


def load_folder(folder: Path) -> tf.PreTrainedModel:
    """The folder's model in float32, eval mode, as a worker builds it (config.architectures' class)."""
    config = tf.AutoConfig.from_pretrained(folder)
    cls = getattr(tf, config.architectures[0])
    return cls.from_pretrained(folder, use_safetensors=True, dtype=torch.float32).eval()
