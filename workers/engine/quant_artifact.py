"""The registry's int8 artifact on the worker: a fragment with `quantization: int8` reads its decoder layers'
q and scales from `quant/int8-v1.safetensors` (registry/quantized.py writes it) instead of quantising at load.

The family code reads a layer's weights with `checkpoint.get_many(names, float32)` and fuses them with
`torch.cat` (q/k/v, gate/up) before the int8 factory builds the linear. Int8Checkpoint answers such a read from
the artifact with QuantizedWeights, whose `torch.cat` stacks rows of q and scales: per-channel scales make that
exactly the quantisation of the concatenated weight, so the bits equal load-time quantisation's, and the fp32
copies of those weights are never read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from genie.workers.contract import FragmentSpec

log = logging.getLogger(__name__)

INT8_ARTIFACT = "quant/int8-v1.safetensors"  # registry/quantized.INT8_PATH
INT8_SCHEME = "int8-symmetric-per-channel-v1"  # registry/quantized.SCHEME: the maths of quant.quantize


class QuantizedWeight:
    """One weight [N, K] as q [N, K] int8 and scale [N] fp32; only `torch.cat` along rows works on it."""

    __slots__ = ("q", "scale")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.q, self.scale = q, scale

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def device(self) -> torch.device:
        return self.q.device

    def int8_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q, self.scale

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        dim = (kwargs or {}).get("dim", args[1] if len(args) > 1 else 0)
        if func is not torch.cat or dim != 0 or not all(isinstance(p, cls) for p in args[0]):
            return NotImplemented  # torch raises TypeError: a weight from the artifact used as a tensor
        parts = args[0]
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))


class Int8Artifact:
    """The artifact's tensors, memory-mapped: `W.int8` and `W.scale` per quantised weight name W."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path, self._handle = path, handle
        self._names = {key.removesuffix(".int8") for key in handle.keys() if key.endswith(".int8")}
        self.used = 0  # weights answered from it

    def has(self, name: str) -> bool:
        return name in self._names

    def get(self, name: str, device: torch.device) -> QuantizedWeight:
        self.used += 1
        q = self._handle.get_tensor(f"{name}.int8").to(device)
        return QuantizedWeight(q, self._handle.get_tensor(f"{name}.scale").to(device=device, dtype=torch.float32))


class Int8Checkpoint:
    """A Checkpoint whose fp32 reads of the artifact's weights come from the artifact; all else passes through."""

    def __init__(self, checkpoint: Any, artifact: Int8Artifact) -> None:
        self.checkpoint, self.artifact = checkpoint, artifact

    def get_many(self, names: Iterable[str], dtype: torch.dtype, device: torch.device) -> list[Any]:
        names = list(names)
        if dtype == torch.float32 and names and all(self.artifact.has(n) for n in names):
            return [self.artifact.get(n, device) for n in names]
        return self.checkpoint.get_many(names, dtype, device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checkpoint, name)


def open_int8_artifact(spec: FragmentSpec) -> Int8Artifact | None:
    """The model folder's int8 artifact when this fragment may use it: quantization int8, the file present, listed
    in the registry's hashes when the spec carries any (the worker checked those bytes), and of this scheme."""
    path = Path(spec.model_dir) / INT8_ARTIFACT
    if spec.quantization != "int8" or not path.is_file():
        return None
    if spec.expected_sha256 and INT8_ARTIFACT not in dict(spec.expected_sha256):
        log.warning("%s is not among the registry's recorded files for %s; quantising at load instead",
                    INT8_ARTIFACT, spec.fragment_id)
        return None
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        log.warning("cannot read %s (%s); quantising at load instead", path, exc)
        return None
    scheme = (handle.metadata() or {}).get("scheme")
    if scheme != INT8_SCHEME:
        log.warning("%s holds int8 scheme %r, this worker computes %r; quantising at load instead",
                    path, scheme, INT8_SCHEME)
        return None
    return Int8Artifact(path, handle)
