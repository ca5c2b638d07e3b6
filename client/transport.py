"""How program RPCs reach a worker: relayed by genie-serve over HTTP (the default), or straight to a worker.

Both carry worker.proto messages as their serialized bytes and raise the client's errors, so the backend does
not know which one it uses.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any, Protocol

from genie.errors import InvalidRequest, NotFound, ResourceExhausted, Unavailable
from genie.protos import worker_pb2 as pb

from .errors import ClientError, ProgramRefused

RESPONSES: dict[str, type] = {
    "LoadProgram": pb.LoadProgramResponse,
    "BindWeights": pb.BindWeightsResponse,
    "RunProgram": pb.RunProgramResponse,
    "ProgramStats": pb.ProgramStatsResponse,
}
PROTOBUF = "application/x-protobuf"
ROUTE = "/v1/genie/programs/"


class Transport(Protocol):
    rpcs: int  # calls made
    bytes_sent: int  # serialized request bytes
    bytes_received: int

    def call(self, rpc: str, request: Any) -> Any: ...

    def close(self) -> None: ...


class HttpRelay:
    """POST {url}/v1/genie/programs/{rpc} with the request's protobuf bytes; genie-serve places the program on
    one of its workers and relays the call. One kept-alive connection per thread."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"genie URL {url!r} must look like http://HOST:PORT")
        self.url = url.rstrip("/")
        self._parts = parts
        self._headers = {"Content-Type": PROTOBUF, "Accept": PROTOBUF}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._local = threading.local()
        self.rpcs = self.bytes_sent = self.bytes_received = 0

    def call(self, rpc: str, request: Any) -> Any:
        body = request.SerializeToString()
        status, data = self._post(f"{self._parts.path.rstrip('/')}{ROUTE}{rpc}", body)
        self.rpcs += 1
        self.bytes_sent += len(body)
        self.bytes_received += len(data)
        if status != 200:
            raise _error(status, _message(data), rpc)
        response = RESPONSES[rpc]()
        response.ParseFromString(data)
        return response

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):  # a kept-alive connection the server closed is retried once on a fresh one
            conn = self._connection()
            try:
                conn.request("POST", path, body=body, headers=self._headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise Unavailable(
                        f"genie-serve at {self.url} did not answer ({type(exc).__name__}: {exc})") from None
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self._parts.hostname, self._parts.port, timeout=self._timeout)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class DirectWorker:
    """Calls one worker's program RPCs over gRPC with its link token (for benchmarks and tests that skip
    genie-serve)."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 300.0) -> None:
        import grpc

        from genie.protos import worker_pb2_grpc

        self._grpc = grpc
        limit = 256 << 20
        self._channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", limit),
                                                                ("grpc.max_receive_message_length", limit)])
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._timeout = timeout
        self.url = f"grpc://{address}"
        self.rpcs = self.bytes_sent = self.bytes_received = 0

    def call(self, rpc: str, request: Any) -> Any:
        try:
            response = getattr(self._stub, rpc)(request, timeout=self._timeout, metadata=self._metadata)
        except self._grpc.RpcError as exc:
            raise _grpc_error(exc.code().name, exc.details() or "", rpc) from None
        self.rpcs += 1
        self.bytes_sent += request.ByteSize()
        self.bytes_received += response.ByteSize()
        return response

    def close(self) -> None:
        self._channel.close()


def _message(data: bytes) -> str:
    try:
        body = json.loads(data)
        return str(body.get("error", {}).get("message") or body)
    except (ValueError, AttributeError):
        return data[:300].decode("utf-8", "replace")


def _error(status: int, message: str, rpc: str) -> Exception:
    if status == 400:
        return ProgramRefused(message) if rpc == "LoadProgram" else InvalidRequest(message)
    if status == 404:
        return NotFound(message)
    if status == 429:  # a worker limit (workers/programs/limits.py): a program too big to load is run locally instead
        return ProgramRefused(message) if rpc == "LoadProgram" else ResourceExhausted(message)
    if status in (502, 503, 504):
        return Unavailable(message)
    return ClientError(f"{rpc} failed with HTTP {status}: {message}")


def _grpc_error(code: str, message: str, rpc: str) -> Exception:
    status = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503,
              "DEADLINE_EXCEEDED": 504, "RESOURCE_EXHAUSTED": 429}.get(code, 500)
    return _error(status, f"{message} ({code})" if status == 500 else message, rpc)
