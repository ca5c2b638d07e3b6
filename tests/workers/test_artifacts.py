"""ArtifactGuard by hand: what a worker may load (artifact roots) and whether its files hash as recorded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from genie.errors import InvalidRequest
from genie.workers.artifacts import ArtifactGuard
from genie.workers.contract import FragmentSpec


def model(folder: Path, weights: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_without_roots_any_folder_loads_as_named(tmp_path: Path) -> None:
    spec = FragmentSpec("f", str(model(tmp_path / "m")))
    assert ArtifactGuard().check(spec) is spec


def test_roots_resolve_the_folder_and_refuse_ways_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", model(tmp_path / "outside")
    inside = model(root / "m")
    guard = ArtifactGuard([str(root)])
    assert guard.check(FragmentSpec("f", f"{root}/m/../m")).model_dir == str(inside.resolve())
    (root / "door").symlink_to(outside, target_is_directory=True)
    (inside / "extra.safetensors").symlink_to(outside / "model.safetensors")
    for path, what in [(outside, "model_dir"), (f"{root}/m/../../outside", "model_dir"), (root / "door", "model_dir"),
                       (inside, "extra.safetensors in model_dir")]:
        with pytest.raises(InvalidRequest, match=rf"permission denied: {what} .* outside this worker's artifact root"):
            guard.check(FragmentSpec("f", str(path)))


def test_a_symlink_inside_the_root_is_allowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blob = model(root / "blobs") / "model.safetensors"
    folder = root / "m"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(blob)
    assert ArtifactGuard([root]).check(FragmentSpec("f", str(folder))).model_dir == str(folder.resolve())


def test_a_hash_mismatch_is_refused_naming_both_hashes(tmp_path: Path) -> None:
    folder = model(tmp_path / "m", b"good")
    guard = ArtifactGuard()
    ok = FragmentSpec("f", str(folder), expected_sha256=(("model.safetensors", sha(b"good").upper()),))
    guard.check(ok)
    bad = FragmentSpec("f", str(folder), expected_sha256=(("model.safetensors", sha(b"other")),))
    with pytest.raises(InvalidRequest, match=rf"artifact model.safetensors of model_dir '{folder}' has sha256 "
                                             rf"{sha(b'good')}, the registry recorded {sha(b'other')}; run "
                                             r"`genie-models verify NAME`"):
        guard.check(bad)
    missing = FragmentSpec("f", str(folder), expected_sha256=(("tokenizer.json", sha(b"")),))
    with pytest.raises(InvalidRequest, match="artifact tokenizer.json .* cannot be read"):
        guard.check(missing)


@pytest.mark.parametrize("name", ["../m/config.json", "/etc/passwd", ""])
def test_expected_names_stay_inside_model_dir(tmp_path: Path, name: str) -> None:
    folder = model(tmp_path / "m")
    with pytest.raises(InvalidRequest, match="give file names relative to model_dir"):
        ArtifactGuard().check(FragmentSpec("f", str(folder), expected_sha256=((name, sha(b"")),)))


def test_each_file_version_is_hashed_once(tmp_path: Path) -> None:
    folder = model(tmp_path / "m", b"aaaa")
    weights = folder / "model.safetensors"
    guard = ArtifactGuard()
    spec = FragmentSpec("f", str(folder), expected_sha256=(("model.safetensors", sha(b"aaaa")),))
    guard.check(spec)
    stat = weights.stat()
    with weights.open("r+b") as f:  # same size, same inode, same mtime: the cached hash stands
        f.write(b"bbbb")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    guard.check(spec)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new version: hashed again
    with pytest.raises(InvalidRequest, match="has sha256"):
        guard.check(spec)
