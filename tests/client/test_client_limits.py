"""What one client's programs may take of a worker (workers/programs/limits.py), and outputs kept on the
worker by handle (resident.py): each limit refuses with RESOURCE_EXHAUSTED naming it, and the host keeps
serving. No processes; test_client_worker_rpc.py checks the same over real gRPC."""

from __future__ import annotations

import pytest
import torch

from client_models import TwoBranch, seeded
from genie.client.tensors import from_pb, raw_bytes, sha256, to_pb
from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.protos import worker_pb2 as pb
from genie.workers.programs import ProgramHost
from genie.workers.programs.limits import ProgramLimits
from test_client_programs import load_and_bind, lowered_of


@pytest.fixture(scope="module")
def branches():
    model = seeded(TwoBranch)
    x = torch.randn(4, 16)
    lowered, args = lowered_of(model, x)
    with torch.no_grad():
        want = model(x)
    return lowered, args, x, want


def host_with(**limits) -> ProgramHost:
    return ProgramHost(torch.device("cpu"), limits=ProgramLimits(**limits))


def bind(host: ProgramHost, lowered, args, client: str) -> pb.BindWeightsResponse:
    entries = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(args[i])), tensor=to_pb(args[i]))
               for n, i in lowered.weight_args.items()]
    return host.bind(pb.BindWeightsRequest(program_id=lowered.program_id, weights=entries, client_id=client))


def run(host, lowered, binding, x, client="", keep=(), handles=None):
    request = pb.RunProgramRequest(program_id=lowered.program_id, binding_id=binding, client_id=client,
                                   keep_outputs=keep, inputs=[pb.Tensor() if handles else to_pb(x)])
    if handles:
        request.input_handles.extend(handles)
    return host.run(request)


def test_an_op_output_past_the_element_limit_is_refused_at_load_and_nothing_is_cached(branches) -> None:
    lowered, args, x, want = branches
    host = host_with(max_output_elements=511)  # the first linear transposes its [32, 16] weight
    with pytest.raises(ResourceExhausted, match=r"makes a tensor of 512 elements; this worker allows at most 511"):
        host.load(pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program))
    assert host.stats(pb.ProgramStatsRequest()).cached_programs == 0
    roomy = host_with(max_output_elements=512)
    binding = load_and_bind(roomy, lowered, args)
    torch.testing.assert_close(from_pb(run(roomy, lowered, binding, x).outputs[0]), want, rtol=0, atol=1e-5)


def test_a_run_past_the_time_limit_is_stopped_between_ops(branches) -> None:
    lowered, args, x, _ = branches
    host = host_with(max_run_seconds=0.0)
    binding = load_and_bind(host, lowered, args)
    with pytest.raises(ResourceExhausted, match=r"past this worker's limit of 0 s per RunProgram"):
        run(host, lowered, binding, x)
    assert host.stats(pb.ProgramStatsRequest()).cached_programs == 1  # still serving


def test_one_clients_weights_and_kept_tensors_are_bounded_and_others_are_not_harmed(branches) -> None:
    lowered, args, x, want = branches
    weights = sum(args[i].numel() * 4 for i in lowered.weight_args.values())
    host = host_with(client_bytes=weights + want.numel() * 4)
    host.load(pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program))
    binding = bind(host, lowered, args, "a").binding_id
    kept = run(host, lowered, binding, x, "a", keep=(0,))
    (handle,) = kept.output_handles
    assert handle and not kept.outputs[0].data and list(kept.outputs[0].shape) == list(want.shape)
    assert host.stats(pb.ProgramStatsRequest(client_id="a")).resident_tensor_bytes == want.numel() * 4
    # a second kept output fits only by dropping the first (least recently used)
    second = run(host, lowered, binding, x, "a", keep=(0,)).output_handles[0]
    with pytest.raises(NotFound, match="dropped to make room"):
        host._kept.get("a", handle)
    assert host._kept.get("a", second).shape == want.shape
    with pytest.raises(NotFound):  # a handle names a tensor for its own client only
        host._kept.get("b", second)
    small = host_with(client_bytes=weights - 1)
    small.load(pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program))
    with pytest.raises(ResourceExhausted, match="past its limit"):
        bind(small, lowered, args, "a")
    host.release(pb.RunProgramRequest(client_id="a", release=[second]))
    assert host.stats(pb.ProgramStatsRequest(client_id="a")).resident_tensors == 0


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_a_kept_output_feeds_the_next_run_by_handle(branches) -> None:
    x = branches[2]
    echo, echo_args = lowered_of(Double(), torch.randn(4, 16))  # x -> 2x: its output can feed itself
    host = ProgramHost(torch.device("cpu"))
    echo_binding = load_and_bind(host, echo, echo_args)
    (handle,) = run(host, echo, echo_binding, x, "a", keep=(0,)).output_handles
    again = run(host, echo, echo_binding, None, "a", handles=[handle])
    torch.testing.assert_close(from_pb(again.outputs[0]), 4 * x, rtol=0, atol=0)
    with pytest.raises(InvalidRequest, match="keep_outputs names an output the program lacks"):
        run(host, echo, echo_binding, x, "a", keep=(3,))
    with pytest.raises(NotFound, match="released"):
        run(host, echo, echo_binding, None, "b", handles=[handle])
