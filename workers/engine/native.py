"""Builds and loads the native CPU kernels (native_*.cpp, native_common.h), once per source and machine.

The build runs g++ directly (no ninja) against the installed torch, and caches the library under
$GENIE_KERNEL_CACHE, else $XDG_CACHE_HOME/genie/kernels, else ~/.cache/genie/kernels, keyed by a hash of
the source, the compiler, the torch version and the CPU flags (the code is compiled for this CPU).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from genie.errors import InvalidRequest

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
SOURCES = (_HERE / "native_kernels.cpp", _HERE / "native_attention.cpp", _HERE / "native_linear.cpp",
           _HERE / "native_gemm.cpp", _HERE / "native_int8.cpp", _HERE / "native_layer.cpp")
HEADERS = (_HERE / "native_common.h", _HERE / "native_ops.h")
_LOCK = threading.Lock()
_FLAGS = [
    "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-w"
]


def native_ops(device: torch.device) -> Any:
    """torch.ops.genie_engine, building it first if needed. InvalidRequest says why it cannot be had."""
    if device.type != "cpu":
        raise InvalidRequest(f"native kernels run on the CPU only, not on {device}; use kernels='torch'")
    with _LOCK:
        if not hasattr(torch.ops.genie_engine, "paged_decode_attention"):
            torch.ops.load_library(str(_build()))
    return torch.ops.genie_engine


def _build() -> Path:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None or not all(f.is_file() for f in SOURCES + HEADERS):
        raise InvalidRequest(
            "native kernels need a C++ compiler (g++, or $CXX) and their sources workers/engine/native_*.cpp; "
            "install g++ or use kernels='torch'"
        )
    out = _cache_dir() / _key(compiler) / "genie_engine_kernels.so"
    if out.is_file():
        return out
    log.info("building the engine's native kernels into %s (once per machine, about 10 s)", out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot write the native kernels to {out.parent}: {exc}; point GENIE_KERNEL_CACHE at a writable folder"
        ) from None
    os.close(fd)
    cmd = [compiler, *_FLAGS, *_includes(), *map(str, SOURCES), "-o", tmp, *_links()]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise InvalidRequest(
            f"building the native kernels failed ({compiler} exited {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}; use kernels='torch'"
        )
    os.replace(tmp, out)  # atomic: a concurrent builder either sees the whole library or none
    return out


def _includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return [abi, *(f"-I{p}" for p in include_paths())]


def _links() -> list[str]:
    lib = Path(torch.__file__).parent / "lib"
    # libgomp.so.1 by soname resolves to the copy torch already loaded, so both share one thread pool
    return [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu"]


def _key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    parts = [*(f.read_bytes() for f in SOURCES + HEADERS), version, torch.__version__, " ".join(_FLAGS)]
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
    digest.update(_cpu_flags().encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _cache_dir() -> Path:
    if root := os.environ.get("GENIE_KERNEL_CACHE"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genie" / "kernels"
