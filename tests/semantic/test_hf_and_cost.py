"""skeleton_from_hf_config() and the cost model."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch import nn

from genie.semantic import capture, skeleton_from_hf_config
from genie.semantic.capture import op_nodes
from genie.semantic.cost import fragment_cost, node_cost, step_time, summarize


@pytest.mark.parametrize(
    ("config", "cls", "inputs"),
    [
        (tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2),
         "LlamaForCausalLM", {"input_ids": (1, 16)}),
        (tf.BertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2),
         "BertModel", {"input_ids": (1, 16)}),
        (tf.ViTConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                      image_size=32, patch_size=8), "ViTForImageClassification", {"pixel_values": (1, 3, 32, 32)}),
        (tf.T5Config(num_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=16), "T5ForConditionalGeneration",
         {"input_ids": (1, 16), "decoder_input_ids": (1, 16)}),
        (tf.CLIPConfig(text_config=dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2),
                       vision_config=dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=2, image_size=32, patch_size=8)),
         "CLIPModel", {"input_ids": (1, 16), "pixel_values": (1, 3, 32, 32)}),
    ],
)
def test_skeleton_builds_the_right_model_on_meta_with_its_inputs(config, cls, inputs):
    model, example = skeleton_from_hf_config(config)
    assert type(model).__name__ == cls
    assert all(t.device.type == "meta" for t in (*model.parameters(), *model.buffers()))
    assert {k: tuple(v.shape) for k, v in example.items()} == inputs
    assert all(v.device.type == "meta" for v in example.values())
    assert not model.training


def test_skeleton_uses_the_config_dtype_and_architectures():
    config = tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                            architectures=["LlamaForSequenceClassification"], dtype="bfloat16")
    model, _ = skeleton_from_hf_config(config)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert next(model.parameters()).dtype == torch.bfloat16


def test_skeleton_refuses_bad_arguments():
    with pytest.raises(TypeError, match="PretrainedConfig"):
        skeleton_from_hf_config({"model_type": "llama"})
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        skeleton_from_hf_config(tf.LlamaConfig(), seq_len=0)


def test_node_fragment_and_roofline_costs():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
    g = capture(model, (torch.zeros(4, 64),))
    first = next(n for n in op_nodes(g) if g.nodes[n]["module"] == "0")
    flops, moved, intensity = node_cost(g, first)
    weight = (64 * 256 + 256) * 4
    assert flops == 2 * 4 * 64 * 256
    assert moved == 4 * 64 * 4 + weight + 4 * 256 * 4  # input + weights + output
    assert intensity == pytest.approx(flops / moved)
    whole = fragment_cost(g, op_nodes(g))
    assert whole.resident_bytes == whole.weight_bytes == weight + (256 * 64 + 64) * 4
    assert whole.input_bytes == 4 * 64 * 4 and whole.output_bytes == 4 * 64 * 4
    summary = summarize(g)
    assert summary.flops == whole.flops and summary.param_bytes == whole.resident_bytes
    # roofline: bound by compute on a slow-compute device, by memory on a slow-memory one
    assert step_time(1e9, 1e6, 1e9, 1e12) == pytest.approx(1.0)
    assert step_time(1e6, 1e9, 1e12, 1e9) == pytest.approx(1.0)
    assert summary.step_time(1e12, 1e9) == pytest.approx(summary.bytes_moved / 1e9)
