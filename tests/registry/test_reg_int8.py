"""`genie-models register --quantization int8`: the int8 artifact stored beside the version's files (the registry
side of tests/workers/test_int8_artifact.py, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genie.registry.cli import main
from genie.registry.quantized import INT8_PATH, SCHEME
from genie.registry.store import Registry


def test_register_with_int8_stores_the_artifact_once(capsys, genie_env, llama_dir: Path, home: Path) -> None:
    assert main(["register", "tiny", str(llama_dir), "-q", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["register", "tiny", str(llama_dir), "-q", "--json", "--quantization", "int8"]) == 0
    out, err = capsys.readouterr()
    made = json.loads(out)
    assert (made["version"], made["content_hash"], made["created"]) == (1, plain["content_hash"], False)
    [art] = [a for a in made["artifacts"] if a["path"] == INT8_PATH]
    assert f"int8 weights stored as {INT8_PATH}" in err and made["bytes"] == plain["bytes"] + art["bytes"]
    assert main(["verify", "tiny:1"]) == 0
    capsys.readouterr()
    with Registry.open(genie_env["GENIE_REGISTRY_URL"], home) as reg:
        record = reg.resolve("tiny")
        assert {a.path: a.sha256 for a in record.artifacts}[INT8_PATH] == art["sha256"]
        from safetensors import safe_open

        with safe_open(str(record.path / INT8_PATH), "pt") as f:
            assert f.metadata()["scheme"] == SCHEME


def test_an_unknown_quantization_is_one_clean_line(capsys, genie_env, llama_dir: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["register", "tiny", str(llama_dir), "--quantization", "int4"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'int4'" in err and "Traceback" not in err
