"""Registry fixtures: every registry test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from genie.registry.store import Registry

HERE = Path(__file__).resolve().parent
_db_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    from registry_pg import start_server

    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL server can be had here: {exc}")
    yield server
    server.stop()


def _create_database(server, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()


def _drop_database(server, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "genie-home"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, home: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{home / 'registry.db'}"
        return
    server = request.getfixturevalue("pg_server")
    name = f"genie_test_{next(_db_names)}"
    _create_database(server, name)
    yield server.url(name)
    _drop_database(server, name)


@pytest.fixture
def reg(db_url: str, home: Path):
    with Registry.open(db_url, home) as registry:
        yield registry


@pytest.fixture
def genie_env(db_url: str, home: Path, monkeypatch) -> dict[str, str]:
    """The environment `genie-models` reads, pointed at this test's registry."""
    monkeypatch.setenv("GENIE_HOME", str(home))
    monkeypatch.setenv("GENIE_REGISTRY_URL", db_url)
    return {"GENIE_HOME": str(home), "GENIE_REGISTRY_URL": db_url}


def make_llama_dir(path: Path, seed: int) -> Path:
    """A tiny random Llama with a tiny word-level tokenizer, saved as an HF folder with safetensors."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(125)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(
        path
    )
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return make_llama_dir(tmp_path_factory.mktemp("tiny-llama-a"), seed=0)


@pytest.fixture(scope="session")
def llama_dir_b(tmp_path_factory) -> Path:
    """Same architecture as llama_dir, other weights: a second version."""
    return make_llama_dir(tmp_path_factory.mktemp("tiny-llama-b"), seed=1)


@pytest.fixture
def factories_on_path(monkeypatch) -> str:
    """Makes tests/registry/registry_factories importable for py: sources, here and in child processes."""
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", str(HERE))
    return "registry_factories"
