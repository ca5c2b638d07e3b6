"""Builds a stateless model from a registry folder: an HF folder (config.json + *.safetensors) or a `py:` factory
folder (genie_model.json + model.safetensors). Weights come from safetensors only; nothing is unpickled.

The genie_model.json format is the registry's (registry/factory.py): {"factory": "module:function",
"input_form": "args" | "kwargs", "inputs": {name: {"shape": [...], "dtype": "float32"}}}. It is read here
rather than imported, because workers may not import the registry.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from genie.errors import InvalidRequest

MANIFEST = "genie_model.json"
FACTORY_WEIGHTS = "model.safetensors"

# HF forward arguments that are tensors a caller may send, and whether each holds integers (ids, masks) or
# floats (pixels, audio). Other forward arguments (return_dict, labels, past_key_values) are not inputs, nor is
# position_ids: every encoder counts positions itself, and a client has nothing to put there.
HF_TENSOR_INPUTS: dict[str, bool] = {
    "input_ids": True,
    "attention_mask": True,
    "token_type_ids": True,
    "pixel_mask": True,
    "pixel_values": False,
    "input_features": False,
    "input_values": False,
}
# What a model reads: every call carries each of these that its forward takes (CLIP takes ids and pixels).
MODALITY_INPUTS = frozenset({"input_ids", "pixel_values", "input_features", "input_values"})
# These describe input_ids token by token: a forward without input_ids (ViT's, Wav2Vec2's) gives its own
# attention_mask another meaning, which no client of ours sends, so they are inputs only beside input_ids.
TOKEN_INPUTS = frozenset({"attention_mask", "token_type_ids"})
AUDIO_SAMPLES = 16000  # a waveform probe: one second at 16 kHz


@dataclass(frozen=True, slots=True)
class InputSig:
    """One forward input: its name, whether it holds integers, and a probe shape (dimension 0 is the batch)."""

    name: str
    integer: bool
    probe_shape: tuple[int, ...]
    varying: tuple[int, ...] = (0,)  # dimensions that may change between calls


@dataclass(slots=True)
class Built:
    module: nn.Module
    inputs: tuple[InputSig, ...]  # in the forward's order
    required: frozenset[str]  # inputs every call must carry
    positional: bool  # the forward takes the inputs positionally (a factory's "args" form)
    vocab_size: int | None  # integer ids must lie in [0, vocab_size) when known
    max_context: int | None  # the longest sequence (dimension 1 of input_ids) the model takes, when known
    hidden_size: int | None
    kind: str  # "hf" or "py", for the log


def build(model_dir: Path, dtype: torch.dtype, device: torch.device) -> Built:
    """The model in eval mode on `device` in `dtype` (floating weights only), with its input signature."""
    if (model_dir / MANIFEST).is_file():
        built = _build_factory(model_dir)
    elif (model_dir / "config.json").is_file():
        built = _build_hf(model_dir, dtype)
    else:
        raise InvalidRequest(
            f"model_dir {str(model_dir)!r} has neither config.json (an HF folder) nor {MANIFEST} (a py: factory "
            "folder); register the model with genie-models and load the folder the registry stored"
        )
    built.module.to(device=device, dtype=dtype).eval()
    return built


def _build_hf(model_dir: Path, dtype: torch.dtype) -> Built:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a per-tensor bar in the worker's log says nothing
    if not any(model_dir.glob("*.safetensors")):
        raise InvalidRequest(f"model_dir {str(model_dir)!r} has no *.safetensors weights; convert it to safetensors")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    model_cls = _hf_class(transformers, config)
    model = model_cls.from_pretrained(model_dir, use_safetensors=True, dtype=dtype)
    names = _hf_input_names(inspect.signature(model.forward).parameters)
    if not names:
        raise InvalidRequest(f"{model_cls.__name__}.forward takes none of {sorted(HF_TENSOR_INPUTS)}; not servable")
    sigs = tuple(_hf_input(name, config) for name in names)
    required = frozenset(names) & MODALITY_INPUTS or frozenset(names[:1])
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    text = getattr(config, "text_config", None) or config
    context = getattr(text, "max_position_embeddings", None)
    return Built(model, sigs, required, False, vocab, context, getattr(text, "hidden_size", None), "hf")


def _hf_class(transformers, config) -> type:
    """The class config.architectures names (what the Auto classes pick), else AutoModel, which picks by config."""
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def _hf_input_names(params) -> list[str]:
    """The forward's tensor inputs in its order; token-wise ones only where it also takes input_ids."""
    names = [n for n in params if n in HF_TENSOR_INPUTS]
    return [n for n in names if n not in TOKEN_INPUTS or "input_ids" in names]


def _hf_input(name: str, config) -> InputSig:
    if name == "pixel_values":
        return _pixels(config)
    if name == "input_features":
        return _features(config)
    if name == "input_values":
        return _values(config)
    if name == "pixel_mask":
        return InputSig(name, True, (1, 32, 32))
    return InputSig(name, True, (1, 3), (0, 1))  # [batch, seq]


def _pixels(config) -> InputSig:
    vision = getattr(config, "vision_config", None) or config
    channels = getattr(vision, "num_channels", 3)
    size = getattr(vision, "image_size", None)
    if size is None:  # convolutional (ResNet-style): any image size
        return InputSig("pixel_values", False, (1, channels, 32, 32), (0, 2, 3))
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return InputSig("pixel_values", False, (1, channels, *size[:2]))


def _features(config) -> InputSig:
    """Spectrogram frames: Speech2Text [batch, frames, features] of any length; Whisper [batch, mel, frames]
    with exactly 2 * max_source_positions frames (its stride-2 conv must leave max_source_positions)."""
    if hasattr(config, "input_feat_per_channel"):
        features = config.input_feat_per_channel * getattr(config, "input_channels", 1)
        return InputSig("input_features", False, (1, 16, features), (0, 1))
    frames = 2 * getattr(config, "max_source_positions", 1500)
    return InputSig("input_features", False, (1, getattr(config, "num_mel_bins", 80), frames))


def _values(config) -> InputSig:
    """AST-style spectrograms [batch, max_length, mel bins], else a raw waveform [batch, samples] of any length."""
    if hasattr(config, "max_length") and hasattr(config, "num_mel_bins"):
        return InputSig("input_values", False, (1, config.max_length, config.num_mel_bins))
    return InputSig("input_values", False, (1, AUDIO_SAMPLES), (0, 1))


def _build_factory(model_dir: Path) -> Built:
    from safetensors.torch import load_model

    manifest = _read_manifest(model_dir)
    module = _call_factory(manifest["factory"])
    try:
        load_model(module, str(model_dir / FACTORY_WEIGHTS), strict=True)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise InvalidRequest(
            f"the weights in {str(model_dir / FACTORY_WEIGHTS)!r} do not fit py:{manifest['factory']} "
            f"({' '.join(str(exc).split())[:300]}); register the model again after changing its factory"
        ) from None
    params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    stored = manifest["inputs"]
    positional = manifest.get("input_form") == "args"
    # Positional example inputs are stored as "0", "1", ...: name them after the forward's arguments.
    names = [params[int(key)].name if positional else key for key in stored]
    sigs = [
        InputSig(name, not getattr(torch, meta["dtype"]).is_floating_point, (1, *meta["shape"][1:]))
        for name, meta in zip(names, stored.values(), strict=True)
    ]
    # The manifest's inputs are in sorted key order ("10" before "2"); positional calls need the forward's.
    place = {p.name: i for i, p in enumerate(params)}
    sigs = tuple(sorted(sigs, key=lambda sig: place.get(sig.name, len(place))))
    return Built(module, sigs, frozenset(names), positional, None, None, None, "py")


def _read_manifest(model_dir: Path) -> dict:
    path = model_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        ref, inputs = manifest["factory"], manifest["inputs"]
        if not isinstance(ref, str) or ref.count(":") != 1 or not isinstance(inputs, dict):
            raise ValueError("factory must be 'module:function' and inputs a mapping")
        for meta in inputs.values():
            if not isinstance(getattr(torch, meta["dtype"], None), torch.dtype) or not meta["shape"]:
                raise ValueError(f"input {meta} needs a torch dtype and a shape with a batch dimension")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{str(path)!r} is not a genie_model.json the registry wrote ({exc}); register again")
    return manifest


def _call_factory(ref: str) -> nn.Module:
    module_name, function_name = ref.removeprefix("py:").split(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
        result = factory()
    except Exception as exc:
        raise InvalidRequest(
            f"py:{ref}: building the model on the worker failed ({type(exc).__name__}: {str(exc)[:200]}); make the "
            "module importable by the worker process (PYTHONPATH) and its factory callable without arguments"
        ) from None
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)):
        raise InvalidRequest(f"py:{ref}: the factory must return (nn.Module, example_inputs)")
    return result[0]
