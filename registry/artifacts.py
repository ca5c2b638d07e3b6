"""Content-addressed file store under ``$GENIE_HOME/artifacts`` and the model folders built from it.

A blob lives at ``artifacts/sha256/<first two hex>/<sha256>``, read-only. Every write goes to a temp
file on the same file system and is published with a no-clobber link, so a reader never sees half a
file and two writers of the same bytes end with one copy. A version's model folder
(``models/<content hash>/``) is a set of hard links to its blobs, published by renaming a temp folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from genie.errors import InvalidRequest, Unavailable

from .progress import Progress, byte_bar

CHUNK = 8 << 20


def hash_file(path: Path, bar: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def hash_files(root: Path, names: list[str], progress: bool) -> dict[str, str]:
    """sha256 of each `root/name`, with one bar over all bytes."""
    total = sum((root / n).stat().st_size for n in names)
    with byte_bar("hashing", total, progress) as bar:
        return {n: hash_file(root / n, bar) for n in names}


class ArtifactStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.blobs = home / "artifacts" / "sha256"
        self.models = home / "models"
        self.tmp = home / "tmp"

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def model_dir(self, content_hash: str) -> Path:
        return self.models / content_hash

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def temp_dir(self, prefix: str) -> Path:
        """A fresh folder on the store's file system, for staging; the caller removes it."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    def put(self, src: Path, sha256: str, bar: Progress | None = None, move: bool = False) -> bool:
        """Stores `src` under `sha256`; returns False (and writes nothing) if those bytes are already here.

        With `move`, `src` is a staging file the store may take over instead of copying.
        """
        if self.has(sha256):
            if bar is not None:
                bar.update(src.stat().st_size)
            return False
        final = self.blob_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._stage(src, sha256, bar, move)
        try:
            os.chmod(tmp, 0o444)
            os.link(tmp, final)
        except FileExistsError:
            return False  # another process published the same bytes first
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _stage(self, src: Path, sha256: str, bar: Progress | None, move: bool) -> Path:
        fd, name = tempfile.mkstemp(prefix=".blob-", dir=self.blobs)
        tmp = Path(name)
        if move:
            os.close(fd)
            os.replace(src, tmp)
            if bar is not None:
                bar.update(tmp.stat().st_size)
            return tmp
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise InvalidRequest(f"{src} changed while it was being registered; register it again once it is stable")
        return tmp

    def put_all(self, root: Path, hashes: dict[str, str], progress: bool, move: bool = False) -> list[str]:
        """Stores every `root/name`; returns the sha256 of the blobs this call created."""
        total = sum((root / n).stat().st_size for n in hashes)
        created = []
        with byte_bar("copying", total, progress) as bar:
            for name, sha in hashes.items():
                if self.put(root / name, sha, bar, move):
                    created.append(sha)
        return created

    def materialise(self, content_hash: str, files: dict[str, str]) -> Path:
        """The model folder for a version whose files are {relative path: sha256}; built once."""
        dest = self.model_dir(content_hash)
        if self._complete(dest, files):
            return dest
        missing = sorted(rel for rel, sha in files.items() if not self.has(sha))
        if missing:
            raise Unavailable(
                f"the artifact store lost {', '.join(missing)} of this model; run genie-models verify to see the "
                "damage, then register the model again"
            )
        self.models.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=self.models))
        try:
            for rel, sha in files.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(self.blob_path(sha), target)
            if dest.exists() and not self._complete(dest, files):
                self._discard(dest)  # an incomplete leftover, e.g. a file deleted by hand
            os.rename(tmp, dest)
        except OSError:
            if not self._complete(dest, files):  # else another process published the same folder first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _discard(self, folder: Path) -> None:
        """Moves `folder` out of the way in one step (readers never see it half deleted), then deletes it."""
        aside = Path(tempfile.mkdtemp(prefix=".model-", dir=self.models)) / "stale"
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            pass  # another process discarded it first
        shutil.rmtree(aside.parent, ignore_errors=True)

    def _complete(self, dest: Path, files: dict[str, str]) -> bool:
        return dest.is_dir() and all((dest / rel).is_file() for rel in files)

    def damage(self, sha256: str, size: int) -> str | None:
        """What is wrong with the blob, or None when its bytes still hash to `sha256`."""
        path = self.blob_path(sha256)
        if not path.is_file():
            return "missing"
        if path.stat().st_size != size:
            return f"size {path.stat().st_size} bytes, expected {size}"
        if hash_file(path) != sha256:
            return "content changed (sha256 mismatch)"
        return None

    def model_file_damage(self, content_hash: str, rel: str, sha256: str) -> str | None:
        """What is wrong with a file of a built model folder (serving reads these), or None."""
        path = self.model_dir(content_hash) / rel
        if not path.is_file():
            return None  # not built yet or removed: resolve() rebuilds it from the blobs
        blob = self.blob_path(sha256)
        if blob.is_file() and os.path.samefile(path, blob):
            return None  # a hard link to the blob, checked with the blob
        if hash_file(path) != sha256:
            return f"model folder copy {path} differs from the registered bytes"
        return None

    def sweep(self, older_than_s: float = 6 * 3600) -> int:
        """Removes staging leftovers of registrations that died (killed, power loss); returns how many."""
        cutoff = time.time() - older_than_s
        staged = (*_entries(self.tmp, ".import-"), *_entries(self.blobs, ".blob-"), *_entries(self.models, ".model-"))
        stale = [p for p in staged if p.lstat().st_mtime < cutoff]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(stale)

    def remove_blobs(self, shas: Iterable[str]) -> None:
        for sha in shas:
            self.blob_path(sha).unlink(missing_ok=True)

    def remove_model_dir(self, content_hash: str) -> None:
        shutil.rmtree(self.model_dir(content_hash), ignore_errors=True)


def _entries(folder: Path, prefix: str) -> list[Path]:
    return list(folder.glob(f"{prefix}*")) if folder.is_dir() else []


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
