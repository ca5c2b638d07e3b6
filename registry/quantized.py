"""The int8 artifact: a version's decoder-layer weights quantised once, in the registry, for `quantization: int8`.

`quant/int8-v1.safetensors` in the model folder holds, for each decoder-layer projection weight W [N, K] of a
Llama-family checkpoint (q/k/v/o, gate/up/down), `W.int8` (q [N, K] int8) and `W.scale` (s [N] fp32), with
W ~= q * s[:, None]: symmetric, one scale per output channel, rounded half to even in fp32 from the checkpoint's
own weights. It is a separate content-hashed artifact of the version (its own blob and artifacts row), so the
worker hash-checks it like the weights; the version's content hash (its identity) stays that of its source files.

The maths is workers/engine/quant.quantize's; the registry may not import the workers package, so it is
repeated here, and tests/workers/test_int8_artifact.py checks that a worker loading this artifact computes the
same bits as one quantising at load.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from . import queries
from .artifacts import hash_file
from .records import VersionRecord
from .schema import ArtifactRow

if TYPE_CHECKING:
    import torch

    from .store import Registry

log = logging.getLogger(__name__)

INT8_PATH = "quant/int8-v1.safetensors"  # workers/engine/quant_artifact.INT8_ARTIFACT; a new scheme, a new file
SCHEME = "int8-symmetric-per-channel-v1"  # quant_artifact.INT8_SCHEME; bump it and INT8_PATH with the maths
QMAX = 127
LINEAR = re.compile(r"(?:^|\.)layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.weight$")


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] int8, scale [N] fp32); an all-zero row gets scale 1."""
    import torch

    w = weight.float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def int8_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """{W.int8, W.scale} for every decoder-layer projection weight in the folder's safetensors files."""
    from safetensors import safe_open

    out = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if LINEAR.search(name):
                    out[f"{name}.int8"], out[f"{name}.scale"] = quantize(f.get_tensor(name))
    return out


def write_int8(model_dir: Path, dest: Path, content_hash: str) -> bool:
    """Writes the artifact of the model in `model_dir` to `dest`; False (nothing written) when the model has no
    Llama-family decoder linears (GPT-2 and stateless models are quantised at load, or not at all)."""
    from safetensors.torch import save_file

    tensors = int8_tensors(model_dir)
    if not tensors:
        return False
    save_file(tensors, str(dest), metadata={"scheme": SCHEME, "source_content_hash": content_hash})
    return True


def has_int8(record: VersionRecord) -> bool:
    return any(a.path == INT8_PATH for a in record.artifacts)


def add_int8(reg: Registry, record: VersionRecord) -> VersionRecord:
    """The version with its int8 artifact: computed, stored and recorded now unless it has one already (a
    version registered before, or without `--quantization int8`, gets it on first need)."""
    if has_int8(record):
        return record
    staging = reg.store.temp_dir(".import-")
    try:
        dest = staging / "int8.safetensors"
        if not write_int8(record.path, dest, record.content_hash):
            log.info("%s has no Llama-family decoder linears; its workers quantise at load, if at all", record.ref)
            return record
        sha, size = hash_file(dest), dest.stat().st_size
        created = reg.store.put(dest, sha, move=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        with reg.write() as s:
            model = queries.model_row(s, record.name)
            row = queries.version_by(s, model.id, content_hash=record.content_hash)
            s.add(ArtifactRow(version_id=row.id, path=INT8_PATH, sha256=sha, bytes=size))
        log.info("%s: int8 weights stored as %s (%d bytes, sha256 %s)", record.ref, INT8_PATH, size, sha[:12])
    except IntegrityError:  # another process recorded it first: theirs has the same bytes (same maths)
        log.info("%s: another process stored its int8 artifact first", record.ref)
        if created:
            reg.collect_garbage({sha}, set())
    fresh = reg.resolve(record.name, record.version)  # rebuilds the model folder with the new file
    return dataclasses.replace(fresh, created=record.created)
