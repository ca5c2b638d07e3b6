"""The fusion partitioner on ViT-B/16 and on small graphs."""

from __future__ import annotations

import networkx as nx
import torch
from semantic_builders import tiny_llama
from torch import nn

from genie.semantic.capture import capture, op_nodes
from genie.semantic.fusion import partition


def test_vit_b16_merges_12_qkv_projections_and_needs_fewer_kernels(vit_graph):
    fused = partition(vit_graph)
    baseline = partition(vit_graph, attention_patterns=False)
    assert fused.parallel_qkv_fusions == 12
    assert fused.attention_fusions == 12
    assert fused.subgraphs < baseline.subgraphs
    assert fused.avg_fusion_size > baseline.avg_fusion_size
    # each merge reads the [1, 197, 768] fp32 input once instead of three times
    assert fused.redundant_read_bytes_saved == 12 * 2 * 197 * 768 * 4
    assert baseline.parallel_qkv_fusions == 0 and baseline.redundant_read_bytes_saved == 0
    assert "12 parallel-QKV merges" in fused.summary()


def test_groups_cover_each_op_once_and_form_a_dag(vit_graph):
    report = partition(vit_graph)
    owner = {n: i for i, group in enumerate(report.groups) for n in group}
    assert sum(len(g) for g in report.groups) == len(owner)
    assert set(owner) <= set(op_nodes(vit_graph))
    quotient = nx.DiGraph()
    quotient.add_nodes_from(range(len(report.groups)))
    quotient.add_edges_from((owner[a], owner[b]) for a, b in vit_graph.edges
                            if a in owner and b in owner and owner[a] != owner[b])
    assert nx.is_directed_acyclic_graph(quotient)


def test_linear_relu_chain_fuses_the_activation_into_the_gemm():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    report = partition(capture(model, (torch.zeros(2, 8),)))
    assert report.subgraphs == 2
    assert all(len(g) == 2 for g in report.groups)
    assert report.intermediate_bytes_saved == 2 * 2 * (2 * 8 * 4)  # two [2, 8] outputs never leave the kernel


def test_gqa_llama_attention_and_qkv():
    model, inputs = tiny_llama()
    report = partition(capture(model, inputs))
    assert report.attention_fusions == 2 and report.parallel_qkv_fusions == 2
