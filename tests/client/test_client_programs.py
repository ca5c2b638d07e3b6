"""The worker's program host (workers/programs) on programs lowered by the client: parity, refusals of unsafe
programs, weights bound by checksum, bounded caches. No processes."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from client_models import SmallResNet, TwoBranch, seeded
from genie.client.lower import lower
from genie.client.tensors import raw_bytes, sha256, to_pb
from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.protos import worker_pb2 as pb
from genie.workers.programs import ProgramHost, ProgramRefused, program_id
from genie.workers.programs.cache import ByteLRU


def lowered_of(model: torch.nn.Module, x: torch.Tensor):
    """The program Dynamo's graph of `model` lowers to at x's shape, and the call's arguments."""
    captured = {}

    def backend(gm, example_inputs):
        from genie.client.backend import _weight_positions

        positions = _weight_positions(gm, example_inputs)

        def run(*args):
            captured["lowered"] = lower(gm, list(args), positions)
            captured["args"] = list(args)
            return gm(*args)

        return run

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(x)
    return captured["lowered"], captured["args"]


def load_and_bind(host: ProgramHost, lowered, args) -> str:
    host.load(pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program))
    weights = {name: args[i] for name, i in lowered.weight_args.items()} | lowered.constants
    entries = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(t)), tensor=to_pb(t)) for n, t in weights.items()]
    response = host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=entries))
    assert not response.missing
    return response.binding_id


def run(host: ProgramHost, lowered, binding_id: str, args) -> list[torch.Tensor]:
    request = pb.RunProgramRequest(program_id=lowered.program_id, binding_id=binding_id,
                                   inputs=[to_pb(args[i]) for i in lowered.input_args])
    from genie.client.tensors import from_pb

    return [from_pb(t) for t in host.run(request).outputs]


@pytest.fixture(scope="module")
def cnn():
    model = seeded(SmallResNet)
    x = torch.randn(2, 3, 32, 32)
    lowered, args = lowered_of(model, x)
    with torch.no_grad():
        expected = model(x)
    return lowered, args, expected


def test_a_lowered_cnn_runs_on_the_host_equal_to_eager(cnn) -> None:
    lowered, args, expected = cnn
    host = ProgramHost(torch.device("cpu"))
    (out,) = run(host, lowered, load_and_bind(host, lowered, args), args)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert json.loads(lowered.program)["format"] == "genie.program/1"
    assert lowered.program_id == program_id(lowered.program)


def test_the_program_is_named_by_its_content() -> None:
    lowered, _ = lowered_of(seeded(TwoBranch), torch.randn(2, 16))
    again, _ = lowered_of(seeded(TwoBranch), torch.randn(2, 16))
    other, _ = lowered_of(seeded(TwoBranch), torch.randn(4, 16))
    assert again.program_id == lowered.program_id  # same graph and shapes, other values
    assert other.program_id != lowered.program_id


def doc_of(lowered) -> dict:
    return json.loads(lowered.program)


def text(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def load(host: ProgramHost, program: bytes, pid: str | None = None) -> pb.LoadProgramResponse:
    return host.load(pb.LoadProgramRequest(program_id=pid or program_id(program), program=program))


def test_pickled_programs_and_pickle_fields_are_refused(cnn) -> None:
    lowered, _, _ = cnn
    host = ProgramHost(torch.device("cpu"))
    with pytest.raises(ProgramRefused, match="pickle; workers never unpickle"):
        load(host, pickle.dumps({"nodes": []}))
    doc = doc_of(lowered) | {"use_pickle": True}
    with pytest.raises(ProgramRefused, match="'use_pickle': pickled payloads"):
        load(host, text(doc))
    doc = doc_of(lowered) | {"sample_inputs": [[1.0]]}
    with pytest.raises(ProgramRefused, match="sample inputs"):
        load(host, text(doc))
    doc = doc_of(lowered)
    doc["nodes"][0]["args"][0] = {"opaque": "gASVBAAAAAAAAACMAS6ULg=="}
    with pytest.raises(ProgramRefused, match="opaque objects are refused"):
        load(host, text(doc))


def test_an_op_off_the_allowlist_is_refused_and_named(cnn) -> None:
    lowered, _, _ = cnn
    host = ProgramHost(torch.device("cpu"))
    for target in ("aten.special_bessel_j0.default", "builtins.eval", "myns.evil.default"):
        doc = doc_of(lowered)
        doc["nodes"][0]["target"] = target
        with pytest.raises(ProgramRefused, match=f"op '{target}' .* not on this worker's allowlist"):
            load(host, text(doc))
    stats = host.stats(pb.ProgramStatsRequest())
    assert stats.cached_programs == 0 and not stats.programs  # nothing cached, no counters for crafted ids


def test_malformed_programs_say_what_is_wrong(cnn) -> None:
    lowered, _, _ = cnn
    host = ProgramHost(torch.device("cpu"))
    with pytest.raises(ProgramRefused, match="not the sha256 of the program"):
        load(host, lowered.program, pid="0" * 64)
    with pytest.raises(ProgramRefused, match="not JSON"):
        load(host, b"\xff\xfe garbage")
    doc = doc_of(lowered)
    doc["nodes"][1]["args"][0] = {"ref": "defined_later"}
    with pytest.raises(ProgramRefused, match="before it is defined"):
        load(host, text(doc))
    doc = doc_of(lowered)
    weight = doc["weights"][0]["name"]
    doc["nodes"].insert(0, {"name": "w", "target": "aten.mul_.Tensor", "args": [{"ref": weight}, 0.0], "kwargs": {}})
    with pytest.raises(ProgramRefused, match="may not mutate their inputs or weights"):
        load(host, text(doc))


def test_weights_are_checked_by_sha256_and_resident_weights_need_not_travel(cnn) -> None:
    lowered, args, expected = cnn
    host = ProgramHost(torch.device("cpu"))
    load(host, lowered.program, lowered.program_id)
    weights = {name: args[i] for name, i in lowered.weight_args.items()}
    named = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(t))) for n, t in weights.items()]
    assert sorted(host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=named)).missing) == \
        sorted(weights)
    first, wrong = sorted(weights)[:2]
    bad = [pb.ProgramWeight(name=first, sha256=sha256(b"other"), tensor=to_pb(weights[first]))]
    with pytest.raises(InvalidRequest, match="hash to"):
        host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=bad + named[1:]))
    binding = load_and_bind(host, lowered, args)
    again = host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=named))
    assert again.binding_id == binding and again.weight_bytes == 0  # by digest only: nothing travelled
    torch.testing.assert_close(run(host, lowered, binding, args)[0], expected, rtol=0, atol=1e-5)


def test_weights_sent_in_chunks_bind_once_all_have_arrived(cnn) -> None:
    lowered, args, expected = cnn
    host = ProgramHost(torch.device("cpu"))
    load(host, lowered.program, lowered.program_id)
    weights = {name: args[i] for name, i in lowered.weight_args.items()}
    names = sorted(weights)
    half = set(names[: len(names) // 2])
    for part in (half, set(names) - half):
        entries = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(t)), tensor=to_pb(t) if n in part else None)
                   for n, t in weights.items()]
        response = host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=entries))
    assert not response.missing and response.binding_id
    torch.testing.assert_close(run(host, lowered, response.binding_id, args)[0], expected, rtol=0, atol=1e-5)


def test_a_program_that_fails_as_it_runs_names_the_node_and_the_host_keeps_serving(cnn) -> None:
    lowered, args, expected = cnn
    doc = doc_of(lowered)
    view = next(n for n in doc["nodes"] if n["target"] == "aten.view.default")
    view["args"][1] = [7, 7, 7]
    broken = text(doc)
    host = ProgramHost(torch.device("cpu"))
    load(host, broken)
    weights = {name: args[i] for name, i in lowered.weight_args.items()}
    entries = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(t)), tensor=to_pb(t)) for n, t in weights.items()]
    binding = host.bind(pb.BindWeightsRequest(program_id=program_id(broken), weights=entries)).binding_id
    request = pb.RunProgramRequest(program_id=program_id(broken), binding_id=binding,
                                   inputs=[to_pb(args[i]) for i in lowered.input_args])
    with pytest.raises(InvalidRequest, match=f"failed at node '{view['name']}' \\(aten.view.default\\): shape"):
        host.run(request)
    torch.testing.assert_close(run(host, lowered, load_and_bind(host, lowered, args), args)[0], expected,
                               rtol=0, atol=1e-5)


def test_inputs_of_another_shape_are_refused(cnn) -> None:
    lowered, args, _ = cnn
    host = ProgramHost(torch.device("cpu"))
    binding = load_and_bind(host, lowered, args)
    request = pb.RunProgramRequest(program_id=lowered.program_id, binding_id=binding,
                                   inputs=[to_pb(torch.randn(3, 3, 32, 32))])
    with pytest.raises(InvalidRequest, match=r"traced for torch.float32 \[2, 3, 32, 32\]"):
        host.run(request)


def test_programs_are_evicted_least_recently_used_by_bytes() -> None:
    small, args_s = lowered_of(seeded(TwoBranch), torch.randn(2, 16))
    other, args_o = lowered_of(seeded(TwoBranch), torch.randn(3, 16))
    host = ProgramHost(torch.device("cpu"), program_bytes=len(small.program) + len(other.program) // 2)
    binding = load_and_bind(host, small, args_s)
    load_and_bind(host, other, args_o)
    with pytest.raises(NotFound, match="send it again with LoadProgram"):
        run(host, small, binding, args_s)
    tiny = ProgramHost(torch.device("cpu"), weight_bytes=100)
    load(tiny, small.program, small.program_id)
    with pytest.raises(ResourceExhausted, match="keeps at most 100 bytes"):
        load_and_bind(tiny, small, args_s)


def test_byte_lru_keeps_the_most_recent_within_budget() -> None:
    lru: ByteLRU[str] = ByteLRU(10)
    lru.put("a", "A", 4)
    lru.put("b", "B", 4)
    assert lru.get("a") == "A"  # a is now the most recent
    assert lru.put("c", "C", 4) == ["b"]
    assert "a" in lru and "c" in lru and lru.used == 8
    assert not lru.fits(11)


class Uninitialised(torch.nn.Module):
    """Adds torch.empty's memory to its input: the program's output is that memory, unless the worker zeroes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.empty(x.shape[0], 512)


def test_memory_from_empty_is_zeroed_so_a_program_cannot_read_what_another_run_left() -> None:
    x = torch.zeros(4, 512)
    lowered, args = lowered_of(Uninitialised(), x)
    doc = doc_of(lowered)
    assert any(n["target"] == "aten.empty.memory_format" for n in doc["nodes"]), doc["nodes"]
    host = ProgramHost(torch.device("cpu"))
    binding = load_and_bind(host, lowered, args)
    for fill in (7.0, -3.5, 1e30):  # leave a pattern in freed memory of the same size, then read it back
        left = torch.full((4, 512), fill)
        del left
        (out,) = run(host, lowered, binding, args)
        assert torch.equal(out, x), f"the program read memory another run left ({out.abs().max().item()})"
