"""The committed gRPC stubs must match what protoc generates from the committed .proto files."""

from pathlib import Path

import pytest

from genie.protos import generate


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = generate.generate(tmp_path)
    assert written, "no stubs were generated"
    for fresh in written:
        committed = generate.HERE / fresh.name
        assert committed.exists(), f"{fresh.name} is not committed; run python -m genie.protos.generate"
        assert committed.read_text() == fresh.read_text(), (
            f"{fresh.name} is stale; run python -m genie.protos.generate"
        )


def test_every_proto_has_stubs() -> None:
    for proto in generate.PROTOS:
        stem = proto.removesuffix(".proto")
        assert (generate.HERE / f"{stem}_pb2.py").exists()
        assert (generate.HERE / f"{stem}_pb2_grpc.py").exists()
