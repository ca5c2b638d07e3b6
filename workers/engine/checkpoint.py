"""Reads the tensors a fragment needs from a model folder's safetensors files, and nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from genie.errors import InvalidRequest


class Checkpoint:
    """Named tensors across the `*.safetensors` files of one folder, opened lazily (mmap, no copy until asked)."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        files = sorted(self.model_dir.glob("*.safetensors"))
        if not files:
            raise InvalidRequest(
                f"no *.safetensors files in {self.model_dir}; register the model so its weights are converted"
            )
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        for path in files:
            handle = _open(path)
            self._handles[path] = handle
            self._where.update(dict.fromkeys(handle.keys(), path))

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handles.clear()

    def has(self, name: str) -> bool:
        return name in self._where

    def find_prefix(self, candidates: Iterable[str], marker: str) -> str:
        """The first prefix p for which some tensor is named p + marker + ...; models saved with and without
        their task head name the same tensors differently ("model.layers.0..." vs "layers.0...")."""
        candidates = tuple(candidates)
        for prefix in candidates:
            if any(name.startswith(prefix + marker) for name in self._where):
                return prefix
        raise InvalidRequest(
            f"the safetensors files in {self.model_dir} hold no tensors named like "
            f"{' or '.join(repr(p + marker) for p in candidates)}...; is this the right model folder?"
        )

    def get(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        path = self._where.get(name)
        if path is None:
            raise InvalidRequest(
                f"tensor {name!r} is missing from the safetensors files in {self.model_dir}; "
                "the checkpoint is incomplete or does not match its config.json"
            )
        try:
            tensor = self._handles[path].get_tensor(name)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise InvalidRequest(f"cannot read tensor {name!r} from {path.name}: {exc}") from None
        return tensor.to(device=device, dtype=dtype)

    def get_many(self, names: Iterable[str], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        return [self.get(name, dtype, device) for name in names]


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{path} does not exist; a model folder needs the Hugging Face config.json") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path} is not readable JSON: {exc}") from None


def _open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise InvalidRequest(
            f"{path.name} in {path.parent} is not a valid safetensors file ({exc}); it may be truncated or "
            "corrupt: re-download or re-register the model"
        ) from None
