"""The program RPCs on a real worker gRPC server (in-process, 127.0.0.1, port 0): the link guard checks them
like every other worker RPC, unsafe programs get INVALID_ARGUMENT, and the worker keeps serving."""

from __future__ import annotations

import pickle

import grpc
import pytest
import torch

from client_models import TwoBranch, seeded
from genie.auth import KeySet, link_metadata
from genie.client.tensors import from_pb, raw_bytes, sha256, to_pb
from genie.protos import worker_pb2 as pb
from genie.protos import worker_pb2_grpc
from genie.workers.device import DeviceFacts
from genie.workers.programs import program_id
from genie.workers.server import WorkerServicer, start_server
from test_client_programs import lowered_of

TOKEN = "client-test-link-token"
FACTS = DeviceFacts("cpu", "test cpu", 1 << 34, 1 << 33, 10.0, 0.1, "float32", ())


@pytest.fixture
async def stub():
    server, port = await start_server(WorkerServicer(torch.device("cpu"), FACTS), "127.0.0.1:0",
                                      link_keys=KeySet([TOKEN]))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield worker_pb2_grpc.WorkerStub(channel)
    await channel.close()
    await server.stop(None)


async def test_program_rpcs_need_the_link_token(stub) -> None:
    for call, request in ((stub.LoadProgram, pb.LoadProgramRequest()), (stub.RunProgram, pb.RunProgramRequest()),
                          (stub.BindWeights, pb.BindWeightsRequest()), (stub.ProgramStats, pb.ProgramStatsRequest())):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request, metadata=link_metadata("wrong"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unsafe_programs_get_a_clear_status_and_the_worker_keeps_serving(stub) -> None:
    auth = link_metadata(TOKEN)
    payload = pickle.dumps(["os.system", "true"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.LoadProgram(pb.LoadProgramRequest(program_id=program_id(payload), program=payload), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workers never unpickle" in refused.value.details()

    model = seeded(TwoBranch)
    x = torch.randn(3, 16)
    lowered, args = lowered_of(model, x)
    evil = lowered.program.replace(b'"aten.addmm.default"', b'"aten.special_bessel_j0.default"', 1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.LoadProgram(pb.LoadProgramRequest(program_id=program_id(evil), program=evil), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'aten.special_bessel_j0.default'" in refused.value.details()

    await stub.LoadProgram(pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program),
                           metadata=auth)
    weights = [pb.ProgramWeight(name=n, sha256=sha256(raw_bytes(args[i])), tensor=to_pb(args[i]))
               for n, i in lowered.weight_args.items()]
    bound = await stub.BindWeights(pb.BindWeightsRequest(program_id=lowered.program_id, weights=weights),
                                   metadata=auth)
    answer = await stub.RunProgram(pb.RunProgramRequest(program_id=lowered.program_id, binding_id=bound.binding_id,
                                                        inputs=[to_pb(x)]), metadata=auth)
    with torch.no_grad():
        torch.testing.assert_close(from_pb(answer.outputs[0]), model(x), rtol=0, atol=1e-5)
    stats = await stub.ProgramStats(pb.ProgramStatsRequest(program_id=lowered.program_id), metadata=auth)
    assert [(c.rpcs, c.runs) for c in stats.programs] == [(3, 1)]


async def test_a_program_past_the_workers_limits_is_refused_before_it_allocates(stub) -> None:
    import json

    auth = link_metadata(TOKEN)
    big = {"format": "genie.program/1", "inputs": [], "weights": [], "outputs": ["big"],
           "nodes": [{"name": "big", "target": "aten.full.default", "args": [[1 << 20, 1 << 10], 1.0], "kwargs": {}}]}
    text = json.dumps(big).encode()
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # 2**30 floats: 4 GiB, never allocated
        await stub.LoadProgram(pb.LoadProgramRequest(program_id=program_id(text), program=text), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1073741824 elements; this worker allows at most 268435456 per op output" in refused.value.details()
    stats = await stub.ProgramStats(pb.ProgramStatsRequest(), metadata=auth)
    assert stats.cached_programs == 0 and (await stub.Health(pb.HealthRequest(), metadata=auth)).serving


def test_the_relay_places_by_placement_when_set_so_one_models_programs_share_a_worker() -> None:
    from genie.serving.programs import place

    workers = ["w0", "w1", "w2"]
    ids = [sha256(str(i).encode()) for i in range(12)]
    assert len({place(workers, pid) for pid in ids}) > 1  # without one, programs spread by their id
    assert len({place(workers, pid, "remote-model-a") for pid in ids}) == 1
    assert place(workers, "", "remote-model-a") == place(workers, ids[0], "remote-model-a")  # release-only calls


async def test_genie_serve_runs_no_client_program_unless_its_config_says_so() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from genie.serving.catalog import Catalog
    from genie.serving.http import HttpState, make_app

    async with TestClient(TestServer(make_app(HttpState(catalog=Catalog([]))))) as client:
        resp = await client.post("/v1/genie/programs/RunProgram", data=b"",
                                 headers={"Content-Type": "application/x-protobuf"})
        body = await resp.json()
    assert resp.status == 404 and "serving.client_programs: true" in body["error"]["message"]


class Weightless(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x * 2 + 1, dim=-1)


async def test_a_program_without_weights_loads_and_runs_in_one_call(stub) -> None:
    auth = link_metadata(TOKEN)
    x = torch.randn(3, 5)
    lowered, _ = lowered_of(Weightless(), x)
    assert not lowered.weight_args and not lowered.constants
    answer = await stub.LoadProgram(pb.LoadProgramRequest(
        program_id=lowered.program_id, program=lowered.program, run=pb.RunProgramRequest(inputs=[to_pb(x)])),
        metadata=auth)
    want = Weightless()(x)
    torch.testing.assert_close(from_pb(answer.run.outputs[0]), want, rtol=0, atol=1e-6)
    again = await stub.RunProgram(pb.RunProgramRequest(program_id=lowered.program_id, inputs=[to_pb(x)]),
                                  metadata=auth)  # no binding: the program has nothing to bind
    torch.testing.assert_close(from_pb(again.outputs[0]), want, rtol=0, atol=1e-6)
    (counters,) = (await stub.ProgramStats(pb.ProgramStatsRequest(program_id=lowered.program_id),
                                           metadata=auth)).programs
    assert (counters.rpcs, counters.runs) == (2, 2)
    assert counters.bytes_out == answer.ByteSize() + again.ByteSize()  # the carried run counted once

    model = seeded(TwoBranch)
    heavy, _ = lowered_of(model, torch.randn(3, 16))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.LoadProgram(pb.LoadProgramRequest(program_id=heavy.program_id, program=heavy.program,
                                                     run=pb.RunProgramRequest()), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only a program without weights may carry its run" in refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RunProgram(pb.RunProgramRequest(program_id=heavy.program_id, inputs=[to_pb(x)]), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # a program with weights needs its binding
