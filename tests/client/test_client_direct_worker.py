"""genie.connect(worker=...): program RPCs straight to a real genie-worker process over gRPC, each message
encoded once by the client (client/transport.py's DirectWorker), and tensors written into the request in place
(client/tensors.py's fill_pb)."""

from __future__ import annotations

import pytest
import torch

import genie
from genie.client import tensors
from genie.client.errors import ClientError
from genie.protos import worker_pb2 as pb

CASES = [
    torch.randn(2, 3, 4),
    torch.randn(5, 7).to(torch.bfloat16),
    torch.arange(6, dtype=torch.int64).reshape(3, 2),
    torch.tensor([True, False, True]),
    torch.empty(0, 4),
    torch.tensor(2.5),
    torch.randn(4, 6).t(),  # not contiguous: travels as its values in row-major order
]


@pytest.mark.parametrize("tensor", CASES, ids=lambda t: f"{t.dtype}-{list(t.shape)}")
def test_a_tensor_written_in_place_is_the_same_message_and_comes_back_equal(tensor) -> None:
    request = pb.RunProgramRequest(program_id="p")
    tensors.fill_pb(request.inputs.add(), tensor)
    built = pb.RunProgramRequest(program_id="p", inputs=[tensors.to_pb(tensor)])
    assert request.SerializeToString() == built.SerializeToString()
    back = tensors.from_pb(pb.RunProgramRequest.FromString(request.SerializeToString()).inputs[0])
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_a_dtype_that_cannot_travel_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="complex64"):
        tensors.fill_pb(pb.Tensor(), torch.zeros(2, dtype=torch.complex64))


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def worker():
    from genie.workers.process import spawn_worker

    proc = spawn_worker(threads=1)
    yield proc
    proc.stop()


@pytest.mark.slow
def test_straight_to_a_worker_the_output_matches_and_the_bytes_are_the_workers_own_count(worker) -> None:
    torch._dynamo.reset()
    session = genie.connect(worker=worker.address, token=worker.token)
    model = Small().eval()
    remote = genie.remote(model, session=session, register=False)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        remote(x)  # first call: lower, place, bind
        t = session.transport
        sent, received, rpcs = t.bytes_sent, t.bytes_received, t.rpcs
        got = remote(x)
        torch.testing.assert_close(got, model(x), rtol=0, atol=1e-5)
    forward = (t.rpcs - rpcs, t.bytes_sent - sent, t.bytes_received - received)
    (counters,) = [c for c in session.stats().programs if c.runs]
    assert forward == (1, counters.last_run_bytes_in, counters.last_run_bytes_out)
    assert counters.last_run_bytes_in > x.numel() * 4 and counters.last_run_bytes_out > 4 * 5 * 4


@pytest.mark.slow
def test_a_wrong_link_token_is_a_clear_client_error(worker) -> None:
    from genie.client.transport import DirectWorker

    transport = DirectWorker(worker.address, token="not-the-token")
    try:
        with pytest.raises(ClientError, match="UNAUTHENTICATED"):
            transport.call("ProgramStats", pb.ProgramStatsRequest())
    finally:
        transport.close()


def test_an_answer_that_does_not_parse_is_a_clear_client_error() -> None:
    from genie.client.transport import DirectWorker

    transport = DirectWorker("127.0.0.1:9")  # never dialled: the method below stands in for the worker
    transport._methods["ProgramStats"] = lambda body, **_: b"\xff\xff\xff"
    try:
        with pytest.raises(ClientError, match="not a ProgramStatsResponse"):
            transport.call("ProgramStats", pb.ProgramStatsRequest())
    finally:
        transport.close()
