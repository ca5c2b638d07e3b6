"""Loading fragments: the family table, partial loads, and every bad model folder or spec refused clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_engine_support import hf_greedy
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from genie.errors import InvalidRequest
from genie.workers.engine import FragmentSpec, SamplingParams, SeqStep, load_fragment, resolve_device, resolve_dtype

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=300, max_position_embeddings=256)
LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
VARIANTS = {
    # untied head, q/k/v/o biases, llama3-scaled RoPE
    "llama": lambda: LlamaConfig(num_hidden_layers=3, num_key_value_heads=2, tie_word_embeddings=False,
                                 attention_bias=True, rope_parameters=LLAMA3_ROPE, **TINY),
    "qwen2": lambda: Qwen2Config(num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True, **TINY),
    "mistral": lambda: MistralConfig(num_hidden_layers=2, num_key_value_heads=1, sliding_window=48, **TINY),
}


def save_random(config, path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # wider than the 0.02 init, so that logits differ enough for the greedy path to move
        for p in model.parameters():
            p.mul_(8.0) if p.dim() > 1 else None
    model.save_pretrained(path, safe_serialization=True)


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory) -> dict:
    dirs = {}
    for name, make in VARIANTS.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        save_random(make(), dirs[name])
    return dirs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_llama_family_variant_matches_transformers(variant_dirs, name):
    model_dir = variant_dirs[name]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    frag = load_fragment(FragmentSpec(name, str(model_dir), dtype="float32", kv_cache_bytes=4 << 20))
    prompt = list(range(7, 40, 3))
    expected = hf_greedy(model, prompt, 20)
    ids, got = list(prompt), []
    top = SamplingParams(logprobs=3)
    [res] = frag.step([SeqStep("a", 0, ids, sample=True, sampling=top)])
    for step in range(20):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
        torch.testing.assert_close(torch.tensor([v for _, v in res.top]), ref.topk(3).values, atol=2e-4, rtol=0)
        got.append(res.token_id)
        ids.append(res.token_id)
        if step < 19:
            [res] = frag.step([SeqStep("a", len(ids) - 1, [res.token_id], sample=True, sampling=top)])
    assert got == expected and len(set(got)) > 1


def test_sliding_window_caps_the_context(variant_dirs):
    frag = load_fragment(FragmentSpec("m", str(variant_dirs["mistral"]), dtype="float32", kv_cache_bytes=4 << 20))
    assert frag.info.max_context == 48


def test_kv_budget_sets_blocks_and_context(gpt2_tiny_dir):
    per_block = 16 * 2 * 4 * 4 * 32 * 4  # tokens * (k, v) * layers * heads * head_dim * fp32 bytes
    frag = load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=10 * per_block + 5))
    assert (frag.info.num_kv_blocks, frag.info.max_context, frag.info.block_size) == (10, 160, 16)
    assert frag.stats().kv_blocks_free == 10 and frag.info.dtype == "float32" and frag.info.num_layers == 4
    with pytest.raises(InvalidRequest, match=f"smaller than one KV block .*at least {per_block} bytes"):
        load_fragment(FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=per_block - 1))


def test_loads_only_the_tensors_its_layers_need(gpt2_tiny_dir, tmp_path):
    """A checkpoint holding only layers 0-1 and the embeddings serves the first half of the model."""
    tensors = load_file(gpt2_tiny_dir / "model.safetensors")
    dropped = ("transformer.h.2.", "transformer.h.3.", "transformer.ln_f")
    kept = {k: v for k, v in tensors.items() if not k.startswith(dropped)}
    save_file(kept, tmp_path / "model.safetensors")
    shutil.copy(gpt2_tiny_dir / "config.json", tmp_path / "config.json")
    front = load_fragment(FragmentSpec("f", str(tmp_path), layer_end=2, has_head=False, dtype="float32"))
    [res] = front.step([SeqStep("a", 0, [1, 2, 3])])
    assert res.hidden.shape == (3, 128)
    with pytest.raises(InvalidRequest, match="tensor 'transformer.h.2.ln_1.weight' is missing"):
        load_fragment(FragmentSpec("b", str(tmp_path), layer_start=2, has_embedding=False, dtype="float32"))


def test_truncated_safetensors_is_refused_naming_the_file(gpt2_tiny_dir, tmp_path):
    shutil.copy(gpt2_tiny_dir / "config.json", tmp_path / "config.json")
    data = (gpt2_tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidRequest, match="model.safetensors .* is not a valid safetensors file"):
        load_fragment(FragmentSpec("g", str(tmp_path)))


def test_unsupported_model_type_names_the_supported_ones(gpt2_tiny_dir, tmp_path):
    shutil.copytree(gpt2_tiny_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    supported = "supported: gpt2, llama, mistral, qwen2"
    with pytest.raises(InvalidRequest, match=f"model_type 'bert' is not supported .*{supported}"):
        load_fragment(FragmentSpec("g", str(tmp_path / "m")))


def test_dynamic_rope_is_refused(tmp_path):
    rope = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    config = LlamaConfig(num_hidden_layers=1, rope_parameters=rope, **TINY)
    save_random(config, tmp_path)
    with pytest.raises(InvalidRequest, match="RoPE type 'dynamic' is not supported"):
        load_fragment(FragmentSpec("d", str(tmp_path)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_start": 3, "layer_end": 2}, r"layer range \[3, 2\) is not a non-empty range within the model's 4"),
        ({"layer_end": 9}, "layer range"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"kv_cache_bytes": 0}, "kv_cache_bytes must be > 0"),
        ({"dtype": "int8"}, "dtype must be auto, bfloat16, float16 or float32, got 'int8'"),
        ({"fragment_id": ""}, "fragment_id must be a non-empty string"),
    ],
)
def test_bad_spec_is_refused(gpt2_tiny_dir, change, message):
    spec = FragmentSpec("g", str(gpt2_tiny_dir))
    with pytest.raises(InvalidRequest, match=message):
        load_fragment(FragmentSpec(**{**{f: getattr(spec, f) for f in spec.__slots__}, **change}))


def test_missing_folder_or_weights(tmp_path, gpt2_tiny_dir):
    with pytest.raises(InvalidRequest, match="config.json does not exist"):
        load_fragment(FragmentSpec("g", str(tmp_path / "nowhere")))
    shutil.copy(gpt2_tiny_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(InvalidRequest, match=r"no \*.safetensors files"):
        load_fragment(FragmentSpec("g", str(tmp_path)))


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "", "CPU"):
        with pytest.raises(InvalidRequest, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequest, match="no CUDA device"):
            resolve_device("cuda:0")
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32 and resolve_dtype("bfloat16", cpu) == torch.bfloat16
    flags = open("/proc/cpuinfo").read()
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if native_bf16 else torch.float32)


def test_bfloat16_fragment_stays_close_to_float32(gpt2_tiny_dir):
    """bf16 (oneDNN prepacked linears where the CPU has bf16) against fp32 on the same prompt: logprobs of
    the top tokens agree to bf16 precision."""
    top = SamplingParams(logprobs=3)
    results = {}
    for dtype in ("float32", "bfloat16"):
        frag = load_fragment(FragmentSpec(dtype, str(gpt2_tiny_dir), dtype=dtype))
        [results[dtype]] = frag.step([SeqStep("a", 0, list(range(40, 80)), sample=True, sampling=top)])
    full, half = results["float32"], results["bfloat16"]
    assert half.top[0][0] == full.top[0][0]
    # bf16 keeps 8 bits of mantissa: about 0.4 % of a value; the tiny model's logits reach tens (its weights
    # are drawn wide so it is lively), so its logprobs agree to about 0.1 absolute
    torch.testing.assert_close(torch.tensor([v for _, v in half.top]), torch.tensor([v for _, v in full.top]),
                               atol=0.15, rtol=0.01)
