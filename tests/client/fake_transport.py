"""A transport that hands program RPCs to an in-process ProgramHost, through real protobuf bytes both ways:
the backend and the worker's program code meet without processes or sockets."""

from __future__ import annotations

from typing import Any

import torch

from genie.errors import GenieError, InvalidRequest, NotFound, ResourceExhausted
from genie.client.errors import ClientError, ProgramRefused
from genie.client.transport import RESPONSES
from genie.workers.programs import ProgramHost

METHODS = {"LoadProgram": "load", "BindWeights": "bind", "RunProgram": "run", "ProgramStats": "stats"}


class HostTransport:
    def __init__(self, host: ProgramHost | None = None) -> None:
        self.host = host or ProgramHost(torch.device("cpu"))
        self.url = "fake://host"
        self.rpcs = self.bytes_sent = self.bytes_received = 0
        self.calls: list[str] = []

    def call(self, rpc: str, request: Any) -> Any:
        wire = type(request).FromString(request.SerializeToString())
        self.calls.append(rpc)
        try:
            with torch.no_grad():
                response = getattr(self.host, METHODS[rpc])(wire)
        except NotFound:
            raise
        except ResourceExhausted as exc:
            raise (ProgramRefused(str(exc)) if rpc == "LoadProgram" else ResourceExhausted(str(exc))) from None
        except InvalidRequest as exc:
            raise (ProgramRefused(str(exc)) if rpc == "LoadProgram" else InvalidRequest(str(exc))) from None
        except GenieError as exc:
            raise ClientError(str(exc)) from None
        self.rpcs += 1
        self.bytes_sent += request.ByteSize()
        self.bytes_received += response.ByteSize()
        return RESPONSES[rpc].FromString(response.SerializeToString())

    def close(self) -> None:
        pass
