"""analyze(): the SmolLM2 profile (workload, KV bytes, phases, LLM shape), serialisation, other workloads."""

from __future__ import annotations

import json

import pytest
import torch
from semantic_builders import tiny_llama
from semantic_zoo import ZOO

from genie.semantic import ANALYZER_VERSION, Profile, analyze

SMOLLM2_KV_FP32 = 2 * 30 * 3 * 64 * 4  # (K, V) x layers x kv_heads x head_dim x bytes


def test_smollm2_is_an_llm_with_correct_kv_bytes(smollm2_profile):
    p = smollm2_profile
    assert p.workload_type == "llm" and p.confidence >= 0.9
    assert p.llm.num_layers == 30 and p.llm.hidden_size == 576 and p.llm.vocab_size == 49152
    assert (p.llm.num_kv_heads, p.llm.head_dim, p.llm.dtype_bytes) == (3, 64, 4)
    assert p.llm.kv_bytes_per_token == SMOLLM2_KV_FP32 == 46080
    assert p.llm.tied_embeddings
    assert p.phase("decode").kv_bytes_per_token == SMOLLM2_KV_FP32


def test_smollm2_explanation_gives_the_evidence(smollm2_profile):
    text = "\n".join(smollm2_profile.explanation)
    assert "30 attention blocks with causal mask" in text
    assert "KV-cache update pattern" in text
    assert "no image input" in text
    assert "tied to the token embedding" in text


def test_smollm2_sizes_and_phases(smollm2_profile):
    p = smollm2_profile
    params = 134_515_008  # SmolLM2-135M: unique parameters, embedding shared with the LM head
    assert p.cost.param_bytes == params * 4
    prefill, decode = p.phase("prefill"), p.phase("decode")
    assert prefill.unit == decode.unit == "token"
    # a decoder forward costs about 2 FLOPs per parameter per token
    assert prefill.flops == pytest.approx(2 * params, rel=0.05)
    assert decode.weight_bytes == pytest.approx(params * 4, rel=0.01)
    assert prefill.arithmetic_intensity > 10 * decode.arithmetic_intensity  # prefill compute-, decode memory-bound
    layers = [b for b in p.blocks if b.kind == "layer"]
    assert [b.index for b in layers] == list(range(30))
    assert layers[0].name == "model.layers.0" and layers[0].param_bytes == p.llm.layer_param_bytes


def test_profile_round_trips_through_json(smollm2_profile):
    data = json.loads(json.dumps(smollm2_profile.to_dict()))
    again = Profile.from_dict(data)
    assert again == smollm2_profile
    assert again.analyzer_version == ANALYZER_VERSION
    summary = again.summary()
    assert summary.startswith("llm (") and "30 layers" in summary and "\n" not in summary


def test_from_dict_refuses_unknown_and_missing_fields(smollm2_profile):
    data = smollm2_profile.to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        Profile.from_dict({**data, "surprise": 1})
    del data["cost"]
    with pytest.raises(ValueError, match="missing field 'cost'"):
        Profile.from_dict(data)
    bad = smollm2_profile.to_dict()
    bad["workload_type"] = "spaceship"
    with pytest.raises(ValueError, match="spaceship"):
        Profile.from_dict(bad)


def test_kv_bytes_follow_the_weight_dtype():
    model, inputs = tiny_llama(dtype=torch.bfloat16)
    p = analyze(model, inputs)
    assert p.llm.dtype_bytes == 2
    assert p.llm.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


def test_vision_phases_are_backbone_and_head():
    model, inputs = ZOO["resnet"][0]()
    p = analyze(model, inputs)
    assert p.workload_type == "vision"
    assert [ph.name for ph in p.phases] == ["backbone", "head"]
    assert p.phase("backbone").flops > 100 * p.phase("head").flops


def test_multimodal_phases_are_branches_and_fusion():
    model, inputs = ZOO["clip"][0]()
    p = analyze(model, inputs)
    assert p.workload_type == "multimodal"
    assert {ph.name for ph in p.phases} == {"branch:image", "branch:text", "fusion"}
    assert {b.branch for b in p.blocks if b.branch} == {"image", "text"}
    assert p.pattern("cross_modal_fusion").count >= 1


def test_recsys_profile_separates_tables_from_the_mlp():
    model, inputs = ZOO["dlrm"][0]()
    p = analyze(model, inputs)
    assert p.workload_type == "recsys"
    assert [ph.name for ph in p.phases] == ["sparse", "dense"]
    sparse = [b for b in p.blocks if b.kind == "sparse"]
    assert len(sparse) == 8 and all(b.param_bytes == 1000 * 16 * 4 for b in sparse)
    assert p.pattern("embedding").count == 8
