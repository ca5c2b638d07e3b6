"""Shared, expensive semantic-layer fixtures: each model is captured once per session, on the meta device."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, ViTConfig

from genie.semantic import skeleton_from_hf_config
from genie.semantic.analyze import analyze_graph
from genie.semantic.capture import capture


@pytest.fixture(scope="session")
def smollm2_config(smollm2_dir):
    return AutoConfig.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_graph(smollm2_config):
    model, inputs = skeleton_from_hf_config(smollm2_config)
    return capture(model, inputs)


@pytest.fixture(scope="session")
def smollm2_profile(smollm2_graph):
    return analyze_graph(smollm2_graph, "smollm2-135m")


@pytest.fixture(scope="session")
def vit_graph():
    """ViT-B/16 with transformers' ViTConfig() defaults (12 layers, hidden 768, 224x224 images)."""
    model, inputs = skeleton_from_hf_config(ViTConfig())
    return capture(model, inputs)
