"""The client API's door: POST /v1/genie/programs/{rpc} relays a program RPC (genie.client) to a worker.

The body is the worker.proto request, serialized (Content-Type application/x-protobuf), and so is the answer.
genie-serve places each program on one of its workers, chosen by the program id so that its load, weight
binding and runs all meet on the same worker; the worker checks the program itself (workers/programs). API
keys are checked by the door's auth middleware as on every other route; errors map to HTTP statuses in
errors_middleware, as everywhere else. The door is closed unless `serving.client_programs: true`: programs run
on the same workers that serve every other client. Each worker bounds what one client's programs may take
(workers/programs/limits.py: per-op output size, time per run, bytes of weights and kept tensors) and says
RESOURCE_EXHAUSTED past it; the operator sets those limits under `workers.programs` in the YAML, which
genie-serve passes to the workers it launches (serving/launcher.py).
A request's `placement`, when set, picks the worker instead of its program id: genie.remote sets one per model
so that the outputs one of its programs keeps on a worker (a KV cache) are there for the next.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from genie.errors import InvalidRequest, NotFound, Unavailable
from genie.protos import worker_pb2 as pb
from genie.workers.client import WorkerClient

PROTOBUF = "application/x-protobuf"
REQUESTS: dict[str, type] = {
    "LoadProgram": pb.LoadProgramRequest,
    "BindWeights": pb.BindWeightsRequest,
    "RunProgram": pb.RunProgramRequest,
    "ProgramStats": pb.ProgramStatsRequest,
}
TIMEOUT_S = 300.0  # a first load may hash and move hundreds of MiB of weights


def _workers(request: web.Request) -> list[WorkerClient]:
    from .http import STATE  # http imports this module; its AppKey is the one the app holds

    entries = request.app[STATE].catalog.entries.values()
    clients = {s.client.address: s.client for e in entries for r in e.service.replicas.values() for s in r.stages}
    if not clients:
        raise Unavailable("genie-serve has no worker to run programs on yet; retry when /health/ready says ready")
    return [clients[address] for address in sorted(clients)]


def place(workers: list[WorkerClient], program_id: str, placement: str = "") -> WorkerClient:
    """The worker a program lives on: the same one for every call naming it (or its `placement`, which puts
    all the programs of one client model on one worker), while the fleet is unchanged."""
    if placement:
        program_id = hashlib.sha256(placement.encode()).hexdigest()
    try:
        slot = int(program_id[:15], 16)
    except ValueError:
        raise InvalidRequest(f"'program_id' {program_id[:20]!r} is not a hex sha256") from None
    return workers[slot % len(workers)]


async def program_call(request: web.Request) -> web.Response:
    from .http import STATE

    if not request.app[STATE].client_programs:
        raise NotFound("this genie-serve does not run client programs (genie.connect, genie.remote, "
                       "torch.compile backend='genie'); its operator can set serving.client_programs: true")
    rpc = request.match_info["rpc"]
    kind = REQUESTS.get(rpc)
    if kind is None:
        raise NotFound(f"no program RPC {rpc[:40]!r}; use one of {sorted(REQUESTS)}")
    if request.content_type != PROTOBUF:
        raise InvalidRequest(f"send the worker.proto {kind.__name__} as 'Content-Type: {PROTOBUF}'")
    message = kind()
    try:
        message.ParseFromString(await request.read())
    except Exception:  # DecodeError and whatever else bad bytes make the parser raise
        raise InvalidRequest(f"the body is not a serialized {kind.__name__} of genie/protos/worker.proto") from None
    workers = _workers(request)
    if rpc == "ProgramStats" and not message.program_id and not message.placement:
        answer: Any = await _all_stats(workers, message)
    else:
        worker = place(workers, message.program_id, message.placement)
        answer = await worker.program_rpc(rpc, message, TIMEOUT_S)
    return web.Response(body=answer.SerializeToString(), content_type=PROTOBUF)


async def _all_stats(workers: list[WorkerClient], message: pb.ProgramStatsRequest) -> pb.ProgramStatsResponse:
    total = pb.ProgramStatsResponse()
    for worker in workers:
        one = await worker.program_rpc("ProgramStats", message, TIMEOUT_S)
        total.programs.extend(one.programs)
        total.cached_programs += one.cached_programs
        total.cached_program_bytes += one.cached_program_bytes
        total.resident_weight_bytes += one.resident_weight_bytes
        total.resident_tensors += one.resident_tensors
        total.resident_tensor_bytes += one.resident_tensor_bytes
    return total


def add_program_routes(app: web.Application) -> None:
    app.router.add_post("/v1/genie/programs/{rpc}", program_call)


def program_paths() -> dict[str, Any]:
    """This door in the OpenAPI spec (serving/openapi.py)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    post = {
        "summary": "genie.client program RPC (LoadProgram, BindWeights, RunProgram, ProgramStats), relayed to "
                   "a worker: a serialized worker.proto request in, its response out",
        "operationId": "programCall",
        "parameters": [{"name": "rpc", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": sorted(REQUESTS)}}],
        "requestBody": {"required": True, "content": {PROTOBUF: binary}},
        "responses": {"200": {"description": "The worker's response", "content": {PROTOBUF: binary}},
                      "default": {"description": "An error (OpenAI's error object)",
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
    }
    return {"/v1/genie/programs/{rpc}": {"post": post}}
