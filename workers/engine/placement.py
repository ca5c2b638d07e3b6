"""Where a fragment runs and in which dtype: `resolve_device` and `resolve_dtype`."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import torch

from genie.errors import InvalidRequest

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu"; "cuda"; "cuda:N"."""
    if not isinstance(name, str) or not _DEVICE_RE.match(name):
        raise InvalidRequest(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidRequest(f"device {name!r} was asked for but this machine has no CUDA device; use cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidRequest(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    return torch.device("cpu")


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """"auto" -> bfloat16 where the device computes it natively (CUDA with bf16, CPUs with AMX/AVX512-BF16)."""
    if name == "auto":
        return torch.bfloat16 if _bf16_is_native(torch.device(device)) else torch.float32
    if name not in _DTYPES:
        raise InvalidRequest(f"dtype must be auto, bfloat16, float16 or float32, got {name!r}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return _cpu_has_bf16()


@cache
def _cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _CPU_BF16_FLAGS)
