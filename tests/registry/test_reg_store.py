"""Registering, resolving, aliasing, deleting and verifying versions, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from registry_helpers import blob_count, row_counts

from genie.errors import AlreadyExists, InvalidRequest, NotFound
from genie.registry.store import Registry


def _param_count(folder: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def test_register_hf_folder_records_what_it_is(reg: Registry, llama_dir: Path) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    assert (record.name, record.version, record.created) == ("tiny", 1, True)
    assert record.architecture == "LlamaForCausalLM"
    assert record.format == "hf" and record.dtype == "float32"
    assert record.parameters == _param_count(llama_dir)  # tied embedding counted once
    assert record.source == str(llama_dir)
    names = {a.path for a in record.artifacts}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    for name in names:
        assert (record.path / name).read_bytes() == (llama_dir / name).read_bytes()
    assert record.details["num_layers"] == 2 and record.details["tokenizer"] is True


def test_same_bytes_again_returns_the_existing_version_and_copies_nothing(
    reg: Registry, llama_dir: Path, home: Path
) -> None:
    first = reg.register("tiny", str(llama_dir), progress=False)
    blobs, stored = blob_count(home), reg.stats.blobs_stored
    again = reg.register("tiny", str(llama_dir), progress=False)
    assert (again.version, again.created, again.content_hash) == (1, False, first.content_hash)
    assert reg.stats.blobs_stored == stored
    assert blob_count(home) == blobs
    assert row_counts(reg)["versions"] == 1


def test_new_weights_make_the_next_version_and_shared_files_are_stored_once(
    reg: Registry, llama_dir: Path, llama_dir_b: Path, home: Path
) -> None:
    one = reg.register("tiny", str(llama_dir), progress=False)
    two = reg.register("tiny", str(llama_dir_b), progress=False)
    assert (one.version, two.version) == (1, 2)
    assert one.content_hash != two.content_hash
    shas = {a.sha256 for a in one.artifacts} | {a.sha256 for a in two.artifacts}
    assert blob_count(home) == len(shas) < len(one.artifacts) + len(two.artifacts)  # tokenizer files shared
    assert reg.resolve("tiny").version == 2  # newest by default


def test_same_bytes_under_another_name_reuse_the_blobs(reg: Registry, llama_dir: Path, home: Path) -> None:
    reg.register("tiny", str(llama_dir), progress=False)
    blobs = blob_count(home)
    other = reg.register("tiny-copy", str(llama_dir), progress=False)
    assert other.created and other.version == 1
    assert blob_count(home) == blobs


def test_resolve_by_number_alias_and_newest(reg: Registry, llama_dir: Path, llama_dir_b: Path) -> None:
    reg.register("tiny", str(llama_dir), alias="prod", progress=False)
    reg.register("tiny", str(llama_dir_b), progress=False)
    assert reg.resolve("tiny", "prod").version == 1
    assert reg.resolve("tiny", 2).version == 2
    assert reg.resolve("tiny", "2").version == 2
    moved = reg.set_alias("tiny", 2, "prod")
    assert moved.aliases == ("prod",)
    assert reg.resolve("tiny", "prod").version == 2
    assert reg.list_models()[0].to_dict() == {"name": "tiny", "versions": [1, 2], "aliases": {"prod": 2}}


def test_resolve_rebuilds_a_removed_model_folder(reg: Registry, llama_dir: Path) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    (record.path / "config.json").unlink()
    again = reg.resolve("tiny")
    assert (again.path / "config.json").read_bytes() == (llama_dir / "config.json").read_bytes()


def test_resolve_says_so_when_the_store_lost_a_file(reg: Registry, llama_dir: Path, home: Path) -> None:
    from genie.errors import Unavailable

    record = reg.register("tiny", str(llama_dir), progress=False)
    weights = next(a for a in record.artifacts if a.path == "model.safetensors")
    (home / "artifacts" / "sha256" / weights.sha256[:2] / weights.sha256).unlink()
    (record.path / "model.safetensors").unlink()
    with pytest.raises(Unavailable, match="lost model.safetensors of this model; run genie-models verify"):
        reg.resolve("tiny")


@pytest.mark.parametrize(
    ("selector", "message"),
    [(7, "tiny has no version 7; it has versions 1"), ("beta", "tiny has no alias 'beta'")],
)
def test_unknown_version_or_alias_is_named(reg: Registry, llama_dir: Path, selector, message: str) -> None:
    reg.register("tiny", str(llama_dir), progress=False)
    with pytest.raises(NotFound, match=message):
        reg.resolve("tiny", selector)


def test_unknown_model_is_named(reg: Registry) -> None:
    with pytest.raises(NotFound, match="no model named 'ghost'"):
        reg.resolve("ghost")


def test_explicit_version_number_and_a_taken_one(reg: Registry, llama_dir: Path, llama_dir_b: Path) -> None:
    assert reg.register("tiny", str(llama_dir), version="5", progress=False).version == 5
    with pytest.raises(AlreadyExists, match="tiny:5 already exists"):
        reg.register("tiny", str(llama_dir_b), version=5, progress=False)
    assert reg.register("tiny", str(llama_dir_b), progress=False).version == 6


def test_delete_refuses_an_aliased_version_unless_forced(
    reg: Registry, llama_dir: Path, llama_dir_b: Path, home: Path
) -> None:
    one = reg.register("tiny", str(llama_dir), alias="prod", progress=False)
    two = reg.register("tiny", str(llama_dir_b), progress=False)
    with pytest.raises(InvalidRequest, match="prod->1"):
        reg.delete("tiny", 1)
    assert reg.resolve("tiny", 1).version == 1
    deleted = reg.delete("tiny", 1, force=True)
    assert [r.ref for r in deleted] == ["tiny:1"]
    assert not one.path.exists() and two.path.exists()
    only_one = {a.sha256 for a in one.artifacts} - {a.sha256 for a in two.artifacts}
    assert only_one and all(not (home / "artifacts" / "sha256" / s[:2] / s).exists() for s in only_one)
    assert reg.verify("tiny")[0].ok  # the shared blobs survived
    assert row_counts(reg)["profiles"] == 1


def test_delete_whole_model_removes_everything(reg: Registry, llama_dir: Path, home: Path) -> None:
    reg.register("tiny", str(llama_dir), progress=False)
    reg.delete("tiny")
    assert all(n == 0 for n in row_counts(reg).values())
    assert blob_count(home) == 0


def test_verify_detects_a_flipped_byte(reg: Registry, llama_dir: Path, home: Path) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    weights = next(a for a in record.artifacts if a.path == "model.safetensors")
    blob = home / "artifacts" / "sha256" / weights.sha256[:2] / weights.sha256
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(weights.bytes // 2)
        byte = f.read(1)
        f.seek(weights.bytes // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    [report] = reg.verify("tiny")
    assert not report.ok
    assert [(d.path, d.problem) for d in report.damage] == [("model.safetensors", "content changed (sha256 mismatch)")]
    assert reg.resolve("tiny").status == "damaged"


def test_verify_reports_a_missing_blob(reg: Registry, llama_dir: Path, home: Path) -> None:
    record = reg.register("tiny", str(llama_dir), progress=False)
    config = next(a for a in record.artifacts if a.path == "config.json")
    (home / "artifacts" / "sha256" / config.sha256[:2] / config.sha256).unlink()
    [report] = reg.verify("tiny", 1)
    assert [(d.path, d.problem) for d in report.damage] == [("config.json", "missing")]


@pytest.mark.parametrize("kind", ["hf", "py"])
def test_two_registries_racing_on_one_database_end_with_one_version(
    kind: str, db_url: str, home: Path, llama_dir: Path, factories_on_path: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # hf copies from the user's folder; py stages its own files, which the store moves instead of copying.
    source = str(llama_dir) if kind == "hf" else f"py:{factories_on_path}:tiny_recsys"
    regs = [Registry.open(db_url, home) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            records = list(pool.map(lambda r: r.register("m", source, progress=False), regs))
        assert {r.version for r in records} == {1}
        assert sorted(r.created for r in records) == [False, True]
        assert row_counts(regs[0])["versions"] == 1
        assert regs[0].verify("m")[0].ok
        assert blob_count(home) == len(records[0].artifacts)
    finally:
        for r in regs:
            r.close()


def test_py_factory_weights_and_example_inputs_round_trip(reg: Registry, factories_on_path: str) -> None:
    import torch
    from registry_factories import TinyRecsys, tiny_recsys
    from safetensors.torch import load_model

    from genie.registry.factory import load_skeleton

    record = reg.register("recsys", f"py:{factories_on_path}:tiny_recsys", progress=False)
    model, inputs = tiny_recsys()
    assert (record.format, record.architecture, record.dtype) == ("py", "TinyRecsys", "float32")
    assert record.parameters == sum(p.numel() for p in model.parameters())  # the tied table counted once
    fresh = TinyRecsys()
    load_model(fresh, str(record.path / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert fresh.out.weight is fresh.items.weight
    skeleton, stored = load_skeleton(f"{factories_on_path}:tiny_recsys", record.path)
    assert next(skeleton.parameters()).device.type == "meta"
    assert stored.keys() == inputs.keys() and all(torch.equal(stored[k], inputs[k]) for k in inputs)
    again = reg.register("recsys", f"py:{factories_on_path}:tiny_recsys", progress=False)
    assert (again.version, again.created) == (1, False)


def test_py_factory_with_positional_inputs(reg: Registry, factories_on_path: str) -> None:
    import torch
    from registry_factories import tiny_vision

    from genie.registry.factory import load_skeleton

    record = reg.register("vision", f"py:{factories_on_path}:tiny_vision", progress=False)
    _, stored = load_skeleton(f"{factories_on_path}:tiny_vision", record.path)
    assert isinstance(stored, tuple) and torch.equal(stored[0], tiny_vision()[1][0])
    assert record.details["inputs"] == {"0": {"shape": [1, 3, 16, 16], "dtype": "float32"}}
