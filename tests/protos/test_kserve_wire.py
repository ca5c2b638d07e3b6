"""protos/kserve.proto is the KServe v2 protocol on the wire: every field of every message has the number, name,
type and cardinality of the copy tritonclient ships (grpc_service.proto), recursively through nested messages."""

import pytest

from genie.protos import kserve_pb2

theirs = pytest.importorskip("tritonclient.grpc.service_pb2")


def differences(ours, other, path: str) -> list[str]:
    found = []
    by_number = {f.number: f for f in other.fields}
    for field in ours.fields:
        twin = by_number.get(field.number)
        where = f"{path}.{field.name} (#{field.number})"
        if twin is None:
            found.append(f"{where}: not in tritonclient's copy")
        elif (twin.name, twin.type, twin.is_repeated) != (field.name, field.type, field.is_repeated):
            found.append(f"{where}: tritonclient has {twin.name}, type {twin.type}, repeated {twin.is_repeated}")
        elif field.message_type is not None:
            found += differences(field.message_type, twin.message_type, where)
    return found


def test_every_message_matches_tritonclients_copy_field_by_field() -> None:
    names = list(kserve_pb2.DESCRIPTOR.message_types_by_name)
    assert len(names) == 14
    for name in names:
        ours = kserve_pb2.DESCRIPTOR.message_types_by_name[name]
        assert ours.full_name == f"genie.kserve.{name}"
        assert differences(ours, theirs.DESCRIPTOR.message_types_by_name[name], name) == []


def test_the_protocols_calls_are_in_tritonclients_service() -> None:
    from genie.serving.kserve_grpc import _MESSAGES, SERVICE

    service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    for method, (request, response) in _MESSAGES.items():
        theirs_method = service.methods_by_name[method]
        assert theirs_method.input_type.name == request.DESCRIPTOR.name
        assert theirs_method.output_type.name == response.DESCRIPTOR.name
