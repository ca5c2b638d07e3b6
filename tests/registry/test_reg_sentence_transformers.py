"""A sentence-transformers folder keeps the module configs modules.json lists, so its pooling survives register."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genie.registry.hf import import_hf_folder
from genie.registry.store import Registry
from genie.serving.stateless.st_files import Pooling, read_pooling

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},  # absent
]
POOLING = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory) -> Path:
    """A tiny BERT laid out as sentence-transformers saves it, with no 2_Normalize folder (as in the real one)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("st-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    (folder / "modules.json").write_text(json.dumps(MODULES))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(POOLING))
    (folder / "1_Pooling" / "notes.md").write_text("not a config")
    return folder


def test_the_import_keeps_the_listed_module_configs(st_dir: Path) -> None:
    files = import_hf_folder(st_dir).files
    assert "1_Pooling/config.json" in files and "modules.json" in files
    assert not any(f.startswith("2_Normalize") or f.endswith("notes.md") for f in files)


def test_registering_keeps_the_pooling_config_in_the_version_folder(reg: Registry, st_dir: Path) -> None:
    record = reg.register("st-bert", str(st_dir), progress=False)
    assert "1_Pooling/config.json" in {a.path for a in record.artifacts}
    kept = record.path / "1_Pooling" / "config.json"
    assert kept.read_bytes() == (st_dir / "1_Pooling" / "config.json").read_bytes()
    assert read_pooling(record.path) == Pooling("mean", True, 64, False)
    (record.path / "1_Pooling" / "config.json").unlink()
    assert (reg.resolve("st-bert").path / "1_Pooling" / "config.json").is_file()  # rebuilt from the store
