from pathlib import Path

import pytest

from genie.errors import ConfigError
from genie.config import Dtype, GenieConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_default_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "llm.yaml")
    assert isinstance(cfg, GenieConfig)
    assert cfg.model.name == "smollm2"
    assert cfg.model.register_if_missing
    assert cfg.model.dtype is Dtype.AUTO
    assert cfg.workers.count == 2


def test_config_is_frozen() -> None:
    cfg = parse_config({"model": {"name": "m"}})
    with pytest.raises(Exception):
        cfg.serving.max_batch_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"name": "m"}, "serving": {"max_batch_tokens": -3}}, "serving.max_batch_tokens must be > 0, got -3"),
        ({"model": {"name": "m"}, "servng": {}}, "servng is not a known key"),
        ({"model": {"name": "m", "colour": 1}}, "model.colour is not a known key"),
        ({}, "model is required"),
        ({"model": {"name": "m", "dtype": "int3"}}, "model.dtype"),
        ({"model": {"name": "../m"}}, "model.name must match"),
        ({"model": {"name": "m"}, "workers": {"device": "tpu"}}, "workers.device must be auto, cpu, cuda or cuda:N"),
        ({"model": {"name": "m"}, "workers": {"addresses": ["nohost"]}}, "workers.addresses must be a list of host:port"),
        ({"model": {"name": "m"}, "workers": {"launch": 0}}, "needs at least one worker"),
        ({"model": {"name": "m", "register_if_missing": True}}, "needs model.source"),
        ({"model": {"name": "m"}, "serving": {"prefill_chunk_tokens": 4096}}, "must be <= max_batch_tokens"),
        ({"model": {"name": "m"}, "serving": {"http_port": 70000}}, "serving.http_port must be <= 65535, got 70000"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)


def test_registry_resolution_reads_env_when_called(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = parse_config({"model": {"name": "m"}})
    monkeypatch.setenv("GENIE_HOME", str(tmp_path))
    monkeypatch.delenv("GENIE_REGISTRY_URL", raising=False)
    assert cfg.registry.resolve_home() == tmp_path
    assert cfg.registry.resolve_url() == f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("GENIE_REGISTRY_URL", "postgresql://u@127.0.0.1/db")
    assert cfg.registry.resolve_url() == "postgresql://u@127.0.0.1/db"


@pytest.mark.parametrize("name", ["embeddings.yaml", "all.yaml", "vision.yaml", "recommender.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.served_models and all(m.register_if_missing and m.source for m in cfg.served_models)


def test_models_lists_several_and_one_model_stays_valid() -> None:
    both = parse_config({"models": [{"name": "a"}, {"name": "b", "max_batch_size": 8, "max_queue_delay_ms": 1.5}]})
    assert [m.name for m in both.served_models] == ["a", "b"] and both.model is None
    assert both.served_models[1].max_batch_size == 8 and both.served_models[1].max_queue_delay_ms == 1.5
    assert [m.name for m in parse_config({"model": {"name": "a"}}).served_models] == ["a"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"name": "a"}, "models": [{"name": "b"}]}, "not both"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "models lists 'a' twice"),
        ({"models": []}, "model is required"),
        ({"models": [{"name": "a", "max_batch_size": 0}]}, "models.0.max_batch_size must be > 0, got 0"),
        ({"models": [{"name": "a", "max_queue_delay_ms": -1}]}, "models.0.max_queue_delay_ms must be >= 0"),
    ],
)
def test_bad_models_lists_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(data)
