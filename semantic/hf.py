"""Weightless HF model skeletons: the model for a config on the meta device plus example inputs for it.

The registry analyses an HF folder this way without loading a single weight.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig
from transformers.models.auto import modeling_auto as auto

AUDIO_SAMPLES = 16000  # one second of 16 kHz audio for waveform models


def skeleton_from_hf_config(config: PretrainedConfig, seq_len: int = 16) -> tuple[nn.Module, dict[str, Any]]:
    """Build the HF model for `config` on the meta device (no weights) and meta example inputs for it.

    Causal LMs get {"input_ids": [1, seq_len]}; vision models {"pixel_values": [1, C, H, W]}; speech models
    their features or waveform; encoder-decoders also {"decoder_input_ids": [1, seq_len]}.
    """
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"skeleton_from_hf_config needs a transformers PretrainedConfig, got {type(config).__name__}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    cls = model_class(config)
    dtype = _dtype(config)
    with torch.device("meta"):
        model = cls._from_config(config, dtype=dtype)
    model.to(device="meta")  # a few models build tensors with legacy constructors that ignore the device context
    model.eval()
    return model, example_inputs(model, config, seq_len)


def model_class(config: PretrainedConfig) -> type[nn.Module]:
    """The class to build: the config's own `architectures[0]` when set, else the task that fits its type."""
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    kind = config.model_type
    two_towers = hasattr(config, "text_config") and hasattr(config, "vision_config")
    if two_towers and kind in auto.MODEL_MAPPING_NAMES:
        return _pick(auto.MODEL_MAPPING_NAMES, kind)  # CLIP, SigLIP: both encoders, no task head
    is_encoder_only = kind in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    tables = [auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES, auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES]
    if not is_encoder_only:
        tables.append(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    tables.append(auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    for table in tables:
        if kind in table:
            return _pick(table, kind)
    if kind in auto.MODEL_MAPPING_NAMES:
        return _pick(auto.MODEL_MAPPING_NAMES, kind)
    raise ValueError(f"transformers has no model class for model_type {kind!r}; set config.architectures")


def _pick(table: dict[str, str | tuple[str, ...]], kind: str) -> type[nn.Module]:
    names = table[kind]
    return getattr(transformers, names if isinstance(names, str) else names[0])


def example_inputs(model: nn.Module, config: PretrainedConfig, seq_len: int) -> dict[str, Any]:
    """Meta tensors for every modality input the model's forward takes."""
    params = inspect.signature(model.forward).parameters
    inputs: dict[str, Any] = {}
    if "input_ids" in params:
        inputs["input_ids"] = _tokens(config, seq_len)
    if "pixel_values" in params:
        inputs["pixel_values"] = _image(config)
    if "input_features" in params:
        inputs["input_features"] = _mel(config)
    if "input_values" in params:
        inputs["input_values"] = _waveform_or_spectrogram(config)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        inputs["decoder_input_ids"] = _tokens(config, seq_len)
    if not inputs:
        raise ValueError(f"cannot build example inputs for {type(model).__name__}: forward takes {list(params)}")
    return inputs


def _tokens(config: PretrainedConfig, seq_len: int) -> torch.Tensor:
    text = getattr(config, "text_config", None) or config
    limit = getattr(text, "max_position_embeddings", None) or seq_len
    return torch.zeros(1, min(seq_len, limit), dtype=torch.long, device="meta")


def _image(config: PretrainedConfig) -> torch.Tensor:
    # the image tower: CLIP-style vision_config, the encoder of an image-to-text model, or the config itself
    towers = (getattr(config, "vision_config", None), getattr(config, "encoder", None), config)
    vision = next(c for c in towers if c is not None and (hasattr(c, "image_size") or c is config))
    size = getattr(vision, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return torch.zeros(1, getattr(vision, "num_channels", 3), h, w, device="meta")


def _mel(config: PretrainedConfig) -> torch.Tensor:
    if hasattr(config, "input_feat_per_channel"):  # Speech2Text: [B, frames, features], subsampled by its convs
        features = config.input_feat_per_channel * getattr(config, "input_channels", 1)
        return torch.zeros(1, getattr(config, "max_source_positions", 1500), features, device="meta")
    # Whisper's encoder halves the frames with a stride-2 conv and expects exactly max_source_positions after it.
    frames = 2 * getattr(config, "max_source_positions", 1500)
    return torch.zeros(1, getattr(config, "num_mel_bins", 80), frames, device="meta")


def _waveform_or_spectrogram(config: PretrainedConfig) -> torch.Tensor:
    if hasattr(config, "max_length") and hasattr(config, "num_mel_bins"):  # AST: [B, frames, mel bins]
        return torch.zeros(1, config.max_length, config.num_mel_bins, device="meta")
    return torch.zeros(1, AUDIO_SAMPLES, device="meta")


def _dtype(config: PretrainedConfig) -> torch.dtype:
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
