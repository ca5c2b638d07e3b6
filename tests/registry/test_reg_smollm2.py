"""SmolLM2 from its packaged GGUF through the real `genie-models` console script, converted once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_helpers import SMOLLM2_SOURCE

GENIE_MODELS = str(Path(sys.executable).parent / "genie-models")
pytestmark = pytest.mark.slow


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([GENIE_MODELS, *argv], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smollm2_home(tmp_path_factory) -> tuple[dict[str, str], subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("smollm2-home")
    env = {**os.environ, "GENIE_HOME": str(home), "GENIE_REGISTRY_URL": f"sqlite:///{home / 'registry.db'}"}
    return env, _run(env, "register", "smollm2", SMOLLM2_SOURCE)


def test_register_converts_with_progress_and_prints_the_version(smollm2_home) -> None:
    _, proc = smollm2_home
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("registered smollm2:1 (LlamaForCausalLM, 134.5M parameters, float32")
    for bar in ("hashing source", "converting", "hashing", "copying"):
        assert f"{bar}:" in proc.stderr, f"no {bar!r} progress bar"


def test_show_json_has_version_architecture_parameters_and_profile(smollm2_home) -> None:
    env, _ = smollm2_home
    shown = json.loads(_run(env, "show", "smollm2", "--json").stdout)
    assert (shown["version"], shown["architecture"], shown["parameters"]) == (1, "LlamaForCausalLM", 134_515_008)
    assert shown["parameters_human"] == "134.5M"
    assert shown["format"] == "gguf" and shown["source"] == SMOLLM2_SOURCE
    assert shown["profile"]["workload_type"] == "llm"
    folder = Path(shown["path"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }


def test_registering_again_returns_the_same_version_and_copies_nothing(smollm2_home) -> None:
    env, _ = smollm2_home
    home = Path(env["GENIE_HOME"])
    before = {p: p.stat().st_ino for p in (home / "artifacts").rglob("*") if p.is_file()}
    proc = _run(env, "register", "smollm2", SMOLLM2_SOURCE, "--json", "-q")
    again = json.loads(proc.stdout)
    assert (again["version"], again["created"]) == (1, False)
    assert {p: p.stat().st_ino for p in (home / "artifacts").rglob("*") if p.is_file()} == before
    assert json.loads(_run(env, "list", "--json").stdout) == [{"name": "smollm2", "versions": [1], "aliases": {}}]


def test_the_model_folder_loads_in_transformers(smollm2_home) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env, _ = smollm2_home
    folder = json.loads(_run(env, "show", "smollm2", "--json").stdout)["path"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in prompt
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
