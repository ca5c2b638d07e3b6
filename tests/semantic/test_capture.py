"""capture(): torch.export on meta tensors, the dispatch-mode fallback, node attributes, bad input."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from semantic_builders import meta_tensor, tiny_llama
from torch import nn
from zoo_custom import MaskedPooling

from genie.semantic import analyze, capture
from genie.semantic.capture import op_nodes
from genie.semantic.fusion import partition


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export refuses it, the dispatch fallback follows a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:
            return self.b(h)
        return torch.relu(self.b(h))


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model is broken on purpose")


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_node_attributes_of_a_linear():
    g = capture(TwoLayer(), (torch.zeros(2, 8),))
    linear = next(n for n in op_nodes(g) if g.nodes[n]["module"] == "fc1")
    d = g.nodes[linear]
    assert d["op"] == "linear" and d["kind"] == "matmul" and d["target"] == "aten.linear.default"
    assert d["shapes"] == [(2, 16)] and d["dtypes"] == ["float32"]
    assert set(d["params"]) == {"fc1.weight", "fc1.bias"}
    assert d["param_bytes"] == (16 * 8 + 16) * 4
    assert d["flops"] == 2 * 2 * 16 * 8
    assert d["output_bytes"] == 2 * 16 * 4
    assert g.graph["module_types"]["fc1"] == "Linear"
    assert g.graph["param_bytes"] == ((16 * 8 + 16) + (4 * 16 + 4)) * 4
    assert list(g.predecessors(linear)) == ["x"]
    assert nx.is_directed_acyclic_graph(g)


def test_meta_model_is_traced_without_materialising_weights():
    model, inputs = tiny_llama()
    g = capture(model, inputs)
    assert g.graph["method"] == "export"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert g.graph["inputs"]["input_ids"].shape == (1, 8)
    assert {g.nodes[n]["op"] for n in op_nodes(g)} >= {"embedding", "linear", "scaled_dot_product_attention"}
    modules = {g.nodes[n]["module"] for n in op_nodes(g)}
    assert "model.layers.1.self_attn.q_proj" in modules


def test_tied_weights_are_counted_once():
    model, inputs = tiny_llama(tie_word_embeddings=True)
    g = capture(model, inputs)
    unique = {id(p): p for p in model.parameters()}
    assert g.graph["param_bytes"] == sum(p.numel() * p.element_size() for p in unique.values())


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fallback_traces_data_dependent_control_flow(device):
    with torch.device(device):
        model = DataDependent()
    g = capture(model, (torch.zeros(1, 8),))
    assert g.graph["method"] == "dispatch"
    assert any("data-dependent" in n for n in g.graph["notes"])
    assert any("torch.export failed" in n for n in g.graph["notes"])
    weights = {p for n in op_nodes(g) for p in g.nodes[n]["params"]}
    assert {"a.weight", "b.weight"} <= weights
    # the fallback sees linear decomposed (t + addmm), folded back to one weight matmul per layer
    matmuls = [n for n in op_nodes(g) if g.nodes[n]["kind"] == "matmul"]
    assert len(matmuls) == 2 and all(g.nodes[n]["params"] for n in matmuls)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fallback_traces_data_dependent_shapes_at_their_upper_bound(device):
    with torch.device(device):
        model = MaskedPooling()
    g = capture(model, (torch.zeros(1, 3, 32, 32),))
    assert g.graph["method"] == "dispatch"
    assert any("upper bound" in n for n in g.graph["notes"])
    head = next(n for n in op_nodes(g) if g.nodes[n]["module"] == "head" and g.nodes[n]["kind"] == "matmul")
    assert g.nodes[head]["shapes"] == [(1, 10)]
    picked = next(n for n in op_nodes(g) if g.nodes[n]["op"] == "index")
    assert g.nodes[picked]["shapes"] == [(15 * 15, 32)]  # every position of the 15x15 feature map kept


def test_fallback_on_a_hf_model_gives_the_same_attention_structure():
    from genie.semantic.capture import split_inputs
    from genie.semantic.capture.dispatch import dispatch_capture
    from genie.semantic.capture.ir import build_graph
    from genie.semantic.patterns.attention import find_attention

    model, inputs = tiny_llama()
    args, kwargs = split_inputs(model, inputs)
    g = build_graph(dispatch_capture(model, args, kwargs), type(model).__name__)
    sites = find_attention(g)
    assert len(sites) == 2 and all(s.causal and s.self_attention for s in sites)
    assert {(s.heads, s.kv_heads, s.head_dim) for s in sites} == {(4, 2, 16)}


def test_model_mode_is_restored():
    model = TwoLayer().train()
    capture(model, (torch.zeros(1, 8),))
    assert model.training


def test_forward_that_raises_gives_a_value_error():
    with pytest.raises(ValueError, match="this model is broken on purpose"):
        capture(Raises(), (torch.zeros(1, 8),))


def test_wrong_input_shape_gives_a_value_error_naming_the_problem():
    with pytest.raises(ValueError, match="example_inputs match what model"):
        capture(TwoLayer(), (torch.zeros(2, 5),))


def test_wrong_argument_name_gives_a_value_error():
    with pytest.raises(ValueError, match="could not trace TwoLayer"):
        capture(TwoLayer(), {"not_x": torch.zeros(2, 8)})


@pytest.mark.parametrize("inputs", [42, "x", None])
def test_unsupported_example_inputs_give_a_type_error(inputs):
    with pytest.raises(TypeError, match="tuple of positional arguments or a dict"):
        capture(TwoLayer(), inputs)


def test_inputs_without_a_tensor_are_refused():
    with pytest.raises(ValueError, match="holds no tensor"):
        capture(TwoLayer(), (3,))


def test_non_module_is_refused():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        capture(lambda x: x, (torch.zeros(1),))


def test_empty_graph_is_refused_by_analyze_and_partition():
    g = capture(Identity(), (meta_tensor(1, 4),))
    assert op_nodes(g) == []
    with pytest.raises(ValueError, match="graph is empty"):
        analyze(Identity(), (meta_tensor(1, 4),))
    with pytest.raises(ValueError, match="empty"):
        partition(g)


def test_real_weights_and_meta_skeleton_give_the_same_profile(gpt2_tiny_dir):
    """The real path: a model loaded with its weights and the weightless skeleton of its config agree."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from genie.semantic import skeleton_from_hf_config

    real = AutoModelForCausalLM.from_pretrained(gpt2_tiny_dir, dtype=torch.float32)
    ids = torch.zeros(1, 16, dtype=torch.long)
    with_weights = analyze(real, {"input_ids": ids})
    skeleton, inputs = skeleton_from_hf_config(AutoConfig.from_pretrained(gpt2_tiny_dir), seq_len=16)
    weightless = analyze(skeleton, inputs)
    assert with_weights.workload_type == weightless.workload_type == "llm"
    # mask construction differs a little between CPU and meta tensors; weights, FLOPs and structure do not
    assert with_weights.cost.param_bytes == weightless.cost.param_bytes
    assert with_weights.cost.flops == pytest.approx(weightless.cost.flops, rel=1e-3)
    assert with_weights.llm == weightless.llm
    assert {p.name: p.count for p in with_weights.patterns} == {p.name: p.count for p in weightless.patterns}
    assert with_weights.llm.num_layers == 4 and with_weights.llm.kv_bytes_per_token == 2 * 4 * 128 * 4
