"""The int8 artifact (registry/quantized.py, workers/engine/quant_artifact.py): computed once in the registry,
stored as a separate content-hashed file of the version, read by a real worker instead of quantising at load,
with the same bits as load-time quantisation. A tiny random Llama (SmolLM2's tokenizer) keeps it fast."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from genie.registry.quantized import INT8_PATH, SCHEME, has_int8
from genie.registry.store import Registry
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.engine import load_fragment
from genie.workers.engine import quant
from genie.workers.engine.quant_artifact import INT8_ARTIFACT, INT8_SCHEME

pytestmark = pytest.mark.slow  # registers a model (analysis included) and starts a worker: ~1 min in all

PROMPTS = [list(range(7, 30)), [400, 12, 9000, 77, 5, 3, 1234], list(range(2000, 2040, 3))]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, smollm2_dir: Path) -> Path:
    """A 2-layer Llama with GQA, drawn wide (std 0.2) so that its continuations depend on the prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("llama-tiny")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("genie-home")
    with Registry.open(f"sqlite:///{home / 'registry.db'}", home) as reg:
        yield reg


@pytest.fixture(scope="module")
def record(registry: Registry, llama_dir: Path):
    """tiny:1 with its int8 artifact, registered plain first (as a model registered before int8 existed)."""
    plain = registry.register("tiny", str(llama_dir), progress=False)
    assert not has_int8(plain)
    return plain, registry.register("tiny", str(llama_dir), progress=False, quantization="int8")


def spec(model_dir: Path | str, **kw) -> FragmentSpec:
    return FragmentSpec("t", str(model_dir), dtype="bfloat16", quantization="int8", kv_cache_bytes=4 << 20, **kw)


def test_the_worker_constants_name_the_registry_artifact() -> None:
    assert (INT8_ARTIFACT, INT8_SCHEME) == (INT8_PATH, SCHEME)


def test_int8_is_a_separate_hashed_artifact_of_the_same_version(registry: Registry, record, llama_dir: Path) -> None:
    plain, int8 = record
    assert (int8.version, int8.content_hash) == (plain.version, plain.content_hash)  # identity unchanged
    [art] = [a for a in int8.artifacts if a.path == INT8_PATH]
    assert {a.path for a in int8.artifacts} - {a.path for a in plain.artifacts} == {INT8_PATH}
    assert registry.store.has(art.sha256) and (int8.path / INT8_PATH).samefile(registry.store.blob_path(art.sha256))
    (report,) = registry.verify("tiny", int8.version)
    assert report.ok and report.files == len(plain.artifacts) + 1
    again = registry.register("tiny", str(llama_dir), progress=False, quantization="int8")
    assert again.artifacts == int8.artifacts and again.version == int8.version  # nothing computed twice


def test_its_bits_are_the_workers_quantisation_of_the_checkpoint(record, llama_dir: Path) -> None:
    from safetensors import safe_open

    _, int8 = record
    with safe_open(str(int8.path / INT8_PATH), "pt") as art, safe_open(str(llama_dir / "model.safetensors"),
                                                                        "pt") as ckpt:
        assert art.metadata()["scheme"] == SCHEME
        names = [k.removesuffix(".int8") for k in art.keys() if k.endswith(".int8")]
        assert len(names) == 2 * 7  # q k v o gate up down, per layer; no norm, embedding or head
        for name in names:
            q, scale = quant.quantize(ckpt.get_tensor(name))
            assert torch.equal(art.get_tensor(f"{name}.int8"), q) and torch.equal(art.get_tensor(f"{name}.scale"),
                                                                                  scale)


def test_first_need_from_a_config_stores_it_and_delete_removes_it(tmp_path: Path, llama_dir: Path) -> None:
    from genie.config import parse_config

    cfg = parse_config({"model": {"name": "tiny", "source": str(llama_dir), "register_if_missing": True,
                                  "quantization": "int8"}})
    with Registry.open(f"sqlite:///{tmp_path / 'r.db'}", tmp_path) as reg:
        reg.register("tiny", str(llama_dir), progress=False)
        ensured = reg.ensure(cfg.model, progress=False)
        [art] = [a for a in ensured.artifacts if a.path == INT8_PATH]
        assert reg.store.has(art.sha256) and (ensured.path / INT8_PATH).is_file()
        reg.delete("tiny")
        assert not reg.store.has(art.sha256)


def test_a_gpt2_gets_no_artifact(tmp_path: Path, gpt2_tiny_dir: Path) -> None:
    from genie.registry.quantized import write_int8

    assert not write_int8(gpt2_tiny_dir, tmp_path / "x.safetensors", "h")
    assert not (tmp_path / "x.safetensors").exists()


def greedy_in_process(frag, prompts: list[list[int]]) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
        tokens = [frag.step([SeqStep(f"s{i}", 0, p, sample=True)])[0].token_id]
        for j in range(NEW_TOKENS - 1):
            tokens.append(frag.step([SeqStep(f"s{i}", len(p) + j, [tokens[-1]], sample=True)])[0].token_id)
        frag.release([f"s{i}"])
        out.append(tokens)
    return out


def test_a_load_reads_the_artifact_and_quantises_no_layer(record, llama_dir: Path, monkeypatch, one_thread,
                                                         caplog) -> None:
    _, int8 = record
    at_load = load_fragment(spec(llama_dir))  # no artifact in the source folder: quantised here
    calls = []
    real = quant.quantize
    monkeypatch.setattr(quant, "quantize", lambda w: calls.append(w.shape) or real(w))
    hashes = tuple(sorted((a.path, a.sha256) for a in int8.artifacts))
    with caplog.at_level(logging.INFO, "genie.workers.engine.loader"):
        cached = load_fragment(spec(int8.path, expected_sha256=hashes))
    # only the head (int8 too, from the table the embedding holds) is quantised at load; no decoder layer is
    assert calls == [torch.Size([49152, 64])] and "14 int8 weights read from the registry's" in caplog.text
    assert isinstance(cached.model.head, (quant.Int8Linear, quant.TorchInt8Linear))
    for a, b in zip(at_load.model.layers, cached.model.layers, strict=True):
        for name in ("qkv", "o", "gate_up", "down"):
            (ka, qa), (kb, qb) = _int8_of(getattr(a, name)), _int8_of(getattr(b, name))
            assert type(ka) is type(kb) and torch.equal(qa, qb) and torch.equal(ka.scale, kb.scale)
    assert greedy_in_process(at_load, PROMPTS) == greedy_in_process(cached, PROMPTS)


def _int8_of(linear) -> tuple[object, torch.Tensor]:
    return linear, linear.packed if isinstance(linear, quant.Int8Linear) else linear.q


def test_an_artifact_the_registry_did_not_list_or_of_another_scheme_is_not_used(tmp_path: Path, record,
                                                                                 monkeypatch, caplog) -> None:
    _, int8 = record
    folder = tmp_path / "m"
    shutil.copytree(int8.path, folder)
    listed = tuple(sorted((a.path, a.sha256) for a in int8.artifacts if a.path != INT8_PATH))
    with caplog.at_level(logging.INFO, "genie.workers.engine"):
        load_fragment(spec(folder, expected_sha256=listed))
    assert "not among the registry's recorded files" in caplog.text and "quantised at load" in caplog.text
    caplog.clear()
    monkeypatch.setattr("genie.workers.engine.quant_artifact.INT8_SCHEME", "int8-v999")
    with caplog.at_level(logging.INFO, "genie.workers.engine"):
        load_fragment(spec(folder))
    assert f"holds int8 scheme '{SCHEME}'" in caplog.text and "quantised at load" in caplog.text


# ---- a real worker process over gRPC, loading from the registry's model folder under its artifact root ----

@pytest.fixture(scope="module")
def worker(registry: Registry, worker_log):
    from genie.workers.process import spawn_worker

    with spawn_worker(device="cpu", threads=1, artifact_roots=[str(registry.home)]) as proc:
        yield proc
        assert proc.alive(), f"the worker died:\n{proc.stderr_tail()}"


@pytest.mark.asyncio
async def test_a_real_worker_serves_the_registry_artifact_bit_for_bit(record, llama_dir: Path, worker,
                                                                      worker_log, one_thread) -> None:
    from genie.workers.client import WorkerClient

    _, int8 = record
    hashes = tuple(sorted((a.path, a.sha256) for a in int8.artifacts))
    local = {"head": load_fragment(spec(llama_dir)), "hidden": load_fragment(spec(llama_dir, has_head=False))}
    async with WorkerClient(worker.address, timeout=60, token=worker.token) as client:
        for fid, has_head in (("head", True), ("hidden", False)):
            await client.load_fragment(FragmentSpec(fid, str(int8.path), dtype="bfloat16", quantization="int8",
                                                    kv_cache_bytes=4 << 20, has_head=has_head,
                                                    expected_sha256=hashes))
        assert sum("int8 weights read from the registry's" in line for line in worker_log.lines) == 2
        for i, prompt in enumerate(PROMPTS):
            [remote] = await client.step("hidden", [SeqStep(f"h{i}", 0, token_ids=prompt)])
            [here] = local["hidden"].step([SeqStep(f"h{i}", 0, prompt)])
            assert torch.equal(remote.hidden, here.hidden), f"prompt {i}: hidden states differ"
            tokens = [(await client.step("head", [SeqStep(f"g{i}", 0, token_ids=prompt, sample=True)]))[0].token_id]
            for j in range(NEW_TOKENS - 1):
                step = SeqStep(f"g{i}", len(prompt) + j, token_ids=[tokens[-1]], sample=True)
                tokens.append((await client.step("head", [step]))[0].token_id)
            assert [tokens] == greedy_in_process(local["head"], [prompt]), f"prompt {i}: greedy tokens differ"
