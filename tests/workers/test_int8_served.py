"""`model.quantization: int8` through a real genie-serve (CLI subprocess, one worker, real SQLite registry): a model
registered without int8 gets its int8 artifact on the first start (registry side), the worker reads it instead of
quantising, and the OpenAI completions endpoint answers with the int8 model."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from genie.registry.quantized import INT8_PATH
from genie.registry.store import Registry

pytestmark = pytest.mark.slow  # starts genie-serve: ~30 s


def tiny_llama(out: Path, smollm2_dir: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, out / name)
    return out


def test_the_first_int8_start_stores_the_artifact_and_the_worker_reads_it(tmp_path: Path, smollm2_dir: Path,
                                                                          worker_log) -> None:
    from genie.serving.process import spawn_server

    source = tiny_llama(tmp_path / "tiny", smollm2_dir)
    home = tmp_path / "home"
    with Registry.open(f"sqlite:///{home / 'registry.db'}", home) as reg:
        before = reg.register("tiny", str(source), progress=False)  # registered before int8 was asked for
    assert all(a.path != INT8_PATH for a in before.artifacts)
    config = {"model": {"name": "tiny", "quantization": "int8", "dtype": "bfloat16"},
              "registry": {"home": str(home)},
              "workers": {"launch": 1, "kv_cache_mib": 16, "threads": 1},
              "serving": {"http_port": 0, "grpc_port": None}}
    (tmp_path / "genie.yaml").write_text(yaml.safe_dump(config))
    server = spawn_server(tmp_path / "genie.yaml", timeout=300, env={"GENIE_HOME": str(home)})
    try:
        body = {"model": "tiny", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
        req = urllib.request.Request(f"{server.url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
    finally:
        assert server.stop(grace=30) == 0, server.log_tail()
    assert answer["usage"]["completion_tokens"] == 6
    log = "\n".join(worker_log.lines)
    assert f"int8 weights stored as {INT8_PATH}" in log, log[-3000:]
    assert "14 int8 weights read from the registry's" in log and "quantised at load" not in log
    with Registry.open(f"sqlite:///{home / 'registry.db'}", home) as reg:
        after = reg.resolve("tiny")
    assert (after.version, after.content_hash) == (before.version, before.content_hash)
    assert {a.path for a in after.artifacts} == {a.path for a in before.artifacts} | {INT8_PATH}
