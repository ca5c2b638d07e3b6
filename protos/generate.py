"""Regenerates the Python stubs next to the .proto files.

Run: python -m genie.protos.generate   (needs grpcio-tools, a dev dependency)
The stubs are committed; tests/protos/test_stubs_fresh.py fails when they are stale.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = sorted(p.name for p in HERE.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Generates stubs for every .proto here into out_dir; returns the written files."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        # Lay the sources out as genie/protos/*.proto so the stubs import `genie.protos.x_pb2`.
        src = Path(tmp) / "genie" / "protos"
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, src / name)
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [str(src / name) for name in PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        written = []
        for path in sorted(src.glob("*_pb2*.py")):
            target = out_dir / path.name
            shutil.copy(path, target)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(HERE):
        print(f"wrote {path}", file=sys.stderr)
