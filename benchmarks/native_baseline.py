"""Another version's native kernels beside this tree's, in one process, for benchmarks that compare the two.

    git archive HEAD workers/engine | tar -x -C /tmp/base   # then: --baseline /tmp/base/workers/engine

`baseline_fragment` compiles that folder's native_*.cpp the way workers/engine/native.py does, but into the op
namespace torch.ops.genie_baseline (the namespace is a macro argument of TORCH_LIBRARY, so -Dgenie_engine=...
renames it), caches the library beside the tree's own, and loads a fragment whose kernels and matmuls are
those. The Python around them is this tree's; ops the baseline lacks (e.g. a newer fused op) are not used.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import torch

NAMESPACE = "genie_baseline"


def baseline_ops(sources: Path) -> Any:
    """torch.ops.genie_baseline built from `sources`/native_*.cpp (+ its headers); SystemExit says why not."""
    from genie.workers.engine import native

    cpp = sorted(sources.glob("native_*.cpp"))
    if not cpp:
        raise SystemExit(f"--baseline {sources}: no native_*.cpp there (give a version's workers/engine folder)")
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(sources.glob("native_*")))).hexdigest()[:16]
    out = native._cache_dir() / f"baseline-{digest}" / "genie_baseline_kernels.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["g++", *native._FLAGS, *native._includes(), f"-Dgenie_engine={NAMESPACE}", *map(str, cpp),
               "-o", str(out), *native._links()]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"--baseline {sources}: the build failed: {result.stderr.strip()[-1500:]}")
    torch.ops.load_library(str(out))
    return getattr(torch.ops, NAMESPACE)


def baseline_fragment(spec: Any, sources: Path) -> Any:
    """A fragment of `spec` on the native kernels built from `sources` instead of this tree's."""
    from genie.workers.engine import load_fragment, native

    ops = baseline_ops(sources)
    with mock.patch.object(native, "native_ops", lambda device: ops):
        return load_fragment(spec, kernels="native")
