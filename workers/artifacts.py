"""What a worker may load: model folders inside its artifact roots, whose files hash to what the registry recorded.

Paths are compared after `Path.resolve()`, so neither `..` nor a symlink leads out of a root. Hashes are
computed once per file version (path, size, mtime, inode) per worker process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from genie.errors import InvalidRequest
from genie.workers.contract import FragmentSpec

CHUNK_BYTES = 8 << 20


class ArtifactGuard:
    """Checks a FragmentSpec before its weights load. With no roots, any folder is allowed (hashes still count)."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.roots = tuple(Path(root).expanduser().resolve() for root in roots)
        self._hashes: dict[tuple[str, int, int, int], str] = {}

    def check(self, spec: FragmentSpec) -> FragmentSpec:
        """The spec to load, its model_dir resolved when roots are set; raises InvalidRequest to refuse it.

        Hashing reads every named file, so call this off the event loop (the servicer runs it on the engine
        thread, right before the load)."""
        folder = Path(spec.model_dir).expanduser().resolve()
        if self.roots:
            self._check_inside(folder, f"model_dir {spec.model_dir!r}")
            for entry in _links_in(folder):
                self._check_inside(entry.resolve(), f"{entry.name} in model_dir {spec.model_dir!r} (a symlink)")
        for name, expected in spec.expected_sha256:
            self._verify(folder, name, expected.lower(), spec.model_dir)
        return dataclasses.replace(spec, model_dir=str(folder)) if self.roots else spec

    def _check_inside(self, path: Path, what: str) -> None:
        if not any(path.is_relative_to(root) for root in self.roots):
            roots = " or ".join(str(root) for root in self.roots)
            raise InvalidRequest(
                f"permission denied: {what} is outside this worker's artifact root {roots}; load models from "
                "there, or start the worker with another --artifact-root"
            )

    def _verify(self, folder: Path, name: str, expected: str, model_dir: str) -> None:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise InvalidRequest(f"expected_sha256 names {name!r}; give file names relative to model_dir")
        path = folder.joinpath(*parts).resolve()
        if self.roots:
            self._check_inside(path, f"artifact {name} of model_dir {model_dir!r}")
        try:
            actual = self._sha256(path)
        except OSError as exc:
            raise InvalidRequest(
                f"artifact {name} of model_dir {model_dir!r} cannot be read ({exc.strerror}); "
                "run `genie-models verify NAME` for this model"
            ) from None
        if actual != expected:
            raise InvalidRequest(
                f"artifact {name} of model_dir {model_dir!r} has sha256 {actual}, the registry recorded "
                f"{expected}; run `genie-models verify NAME` for this model, then register it again"
            )

    def _sha256(self, path: Path) -> str:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
            if key not in self._hashes:
                digest = hashlib.sha256()
                while chunk := f.read(CHUNK_BYTES):
                    digest.update(chunk)
                self._hashes[key] = digest.hexdigest()
        return self._hashes[key]


def _links_in(folder: Path) -> list[Path]:
    """Symlinks anywhere under `folder` (a file inside the root may still point out of it); os.walk does not
    follow them, so a symlink loop cannot hang the check."""
    links = []
    for parent, dirs, files in os.walk(folder):
        links += [Path(parent, name) for name in dirs + files if Path(parent, name).is_symlink()]
    return links
