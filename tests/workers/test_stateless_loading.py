"""Building stateless models in-process, no worker: what a folder that does not fit its factory gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from genie.errors import InvalidRequest
from genie.registry.factory import import_factory
from genie.workers.contract import FragmentSpec
from genie.workers.stateless import load_stateless

CPU = torch.device("cpu")


@pytest.fixture
def cnn_dir(tmp_path: Path) -> Path:
    # stateless_models sits next to this file, which pytest puts on sys.path.
    import_factory("stateless_models:small_cnn", tmp_path)
    return tmp_path


def load(folder: Path):
    return load_stateless(FragmentSpec("c", str(folder), dtype="float32", kind="stateless"), CPU)


def test_a_factory_folder_loads_with_named_inputs(cnn_dir: Path) -> None:
    fragment = load(cnn_dir)
    assert [t.name for t in fragment.info.inputs] == ["images"]
    out = fragment.run({"images": torch.zeros(3, 3, 16, 16)})
    assert out["output_0"].shape == (3, 10) and fragment.stats().max_batch == 3


def test_weights_missing_a_key_are_refused_by_strict_loading(cnn_dir: Path) -> None:
    weights = load_file(cnn_dir / "model.safetensors")
    weights.pop("head.bias")
    save_file(weights, cnn_dir / "model.safetensors")
    with pytest.raises(InvalidRequest, match="do not fit py:stateless_models:small_cnn.*head.bias"):
        load(cnn_dir)


def test_a_broken_manifest_is_refused(cnn_dir: Path) -> None:
    (cnn_dir / "genie_model.json").write_text(json.dumps({"factory": "nocolon", "inputs": {}}))
    with pytest.raises(InvalidRequest, match="is not a genie_model.json the registry wrote"):
        load(cnn_dir)


def test_an_unimportable_factory_says_how_to_fix_it(cnn_dir: Path) -> None:
    manifest = json.loads((cnn_dir / "genie_model.json").read_text())
    (cnn_dir / "genie_model.json").write_text(json.dumps({**manifest, "factory": "no_such_module:f"}))
    with pytest.raises(InvalidRequest, match="make the module importable by the worker process"):
        load(cnn_dir)


def test_a_wrong_image_shape_names_the_input(cnn_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"input 'images' has shape \[1, 3, 8, 8\]; send \[N, 3, 16, 16\]"):
        load(cnn_dir).run({"images": torch.zeros(1, 3, 8, 8)})


VISION = {
    "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=3)),
    "resnet": lambda: transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
}


@pytest.mark.parametrize("name", sorted(VISION))
def test_hf_vision_models_equal_transformers(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = VISION[name]().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    fragment = load(tmp_path)
    assert [t.name for t in fragment.info.inputs] == ["pixel_values"]  # ViT's attention_mask is no client's
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, expected = fragment.run({"pixel_values": pixels}), model(pixel_values=pixels)
    assert set(out) == {k for k, v in expected.items() if isinstance(v, torch.Tensor)}
    for key, value in out.items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=0)


AUDIO = {  # name: (model, the input, its served shape, a probe of it)
    "whisper": (lambda: transformers.WhisperForAudioClassification(transformers.WhisperConfig(
        num_mel_bins=16, max_source_positions=20, d_model=32, encoder_layers=1, encoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=32,
        num_labels=3, classifier_proj_size=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)), "input_features", (-1, 16, 40), (2, 16, 40)),
    "wav2vec2": (lambda: transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        vocab_size=32, num_labels=3, classifier_proj_size=16)), "input_values", (-1, -1), (2, 800)),
}


@pytest.mark.parametrize("name", sorted(AUDIO))
def test_hf_audio_models_take_their_features_and_equal_transformers(tmp_path: Path, name: str) -> None:
    build, input_name, shape, probe = AUDIO[name]
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    fragment = load(tmp_path)
    assert [(t.name, t.shape) for t in fragment.info.inputs] == [(input_name, shape)]
    audio = torch.randn(*probe)
    with torch.no_grad():
        out, expected = fragment.run({input_name: audio}), model(**{input_name: audio})
    torch.testing.assert_close(out["logits"], expected.logits, atol=1e-5, rtol=0)
