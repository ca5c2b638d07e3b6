from pathlib import Path

import pytest

from genie.errors import ConfigError
from genie.config import Dtype, GenieConfig, WorkersConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_default_config_loads() -> None:
    cfg = load_config(REPO / "configs" / "llm.yaml")
    assert isinstance(cfg, GenieConfig)
    assert cfg.model.name == "smollm2"
    assert cfg.model.register_if_missing
    assert cfg.model.dtype is Dtype.AUTO
    assert cfg.workers.count == 1 and cfg.workers.threads is None  # one worker with every core (measured)


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


SHIPPED = ["embeddings.yaml", "all.yaml", "vision.yaml", "recommender.yaml", "llm.yaml", "llm-2x1.yaml", "llm-1x2.yaml",
           "multimodal.yaml", "vision-pipeline.yaml", "recsys-sharded.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
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


def test_a_model_entry_may_pin_a_strategy_and_defaults_to_auto() -> None:
    from genie.config import Strategy
    from genie.semantic import PlanOptions

    assert parse_config({"model": {"name": "m"}}).model.strategy is Strategy.AUTO
    pinned = parse_config({"models": [{"name": "a", "strategy": "recsys_split"}, {"name": "b", "strategy": "disaggregated"}]})
    assert [m.strategy for m in pinned.served_models] == [Strategy.RECSYS_SPLIT, Strategy.DISAGGREGATED]
    for strategy in Strategy:  # every value the config takes is one the planner takes
        assert PlanOptions(strategy=strategy.value).strategy == strategy.value


def test_an_unknown_strategy_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"name": "m", "strategy": "sharded"}})
    assert "model.strategy" in str(info.value) and "recsys_split" in str(info.value)


def _workers(**workers) -> WorkersConfig:
    return parse_config({"model": {"name": "m"}, "workers": workers}).workers


def test_launcher_defaults_keep_old_configs_working() -> None:
    from genie.config import Launcher

    assert _workers().launcher is Launcher.LOCAL and _workers().launch == 2
    mixed = _workers(launch=1, addresses=["10.0.0.5:7000"])  # launched + attached, as before the key existed
    assert mixed.launcher is Launcher.LOCAL and mixed.count == 2
    attached = _workers(launch=0, addresses=["10.0.0.5:7000"])
    assert attached.launcher is Launcher.ADDRESSES and attached.count == 1


def test_launcher_addresses_and_ray_fill_in_what_they_imply() -> None:
    from genie.config import Launcher

    attached = _workers(launcher="addresses", addresses=["h:1", "h:2"])
    assert attached.launch == 0 and attached.count == 2
    on_ray = _workers(launcher="ray", launch=3, ray_address="10.0.0.1:6379", ray_resources={"genie_worker": 1})
    assert on_ray.launcher is Launcher.RAY and on_ray.count == 3
    assert on_ray.ray_resources == {"genie_worker": 1.0}
    assert _workers(launcher="ray").ray_address == "auto"


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ({"launcher": "addresses", "launch": 2, "addresses": ["h:1"]},
         "launcher addresses, which starts no worker, but launch is 2"),
        ({"launcher": "addresses"}, "launcher addresses, which needs the workers' host:port under addresses"),
        ({"launcher": "ray", "addresses": ["h:1"]}, "launcher ray, which places every worker itself, but addresses"),
        ({"launcher": "ray", "launch": 0}, "launcher ray with launch 0"),
        ({"ray_address": "local"}, "has ray_address, which applies to launcher ray only, but the launcher is 'local'"),
        ({"launcher": "addresses", "addresses": ["h:1"], "ray_resources": {"x": 1}}, "has ray_resources"),
        ({"launcher": "ray", "ray_address": "not an address"}, "workers.ray_address must be auto, local, HOST:PORT"),
        ({"launcher": "ray", "ray_resources": {"GPU": 1}}, "CPU, GPU and memory come from the plan"),
        ({"launcher": "ray", "ray_resources": {"genie_worker": 0}}, "amounts > 0"),
        ({"launcher": "kubernetes"}, "workers.launcher: Input should be 'local', 'addresses' or 'ray'"),
    ],
)
def test_contradicting_launcher_keys_name_the_problem(workers: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _workers(**workers)
    assert message in str(info.value), str(info.value)
    assert str(info.value).startswith("config: workers"), str(info.value)


def test_the_multimodal_config_pins_the_branch_parallel_plan() -> None:
    from genie.config import Strategy

    (model,) = load_config(REPO / "configs" / "multimodal.yaml").served_models
    assert model.strategy is Strategy.BRANCH_PARALLEL and model.source == "py:genie.serving.demo_models:tiny_clip"


def test_the_shipped_ray_config_loads() -> None:
    from genie.config import Launcher

    workers = load_config(REPO / "configs" / "ray.yaml").workers
    assert (workers.launcher, workers.ray_address, workers.launch, workers.threads) == (Launcher.RAY, "auto", 2, 1)
