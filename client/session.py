"""A connection to genie-serve (or to one worker) and the programs it has placed: load once, bind weights
once, then one RunProgram round trip per graph call."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from genie.errors import NotFound
from genie.protos import worker_pb2 as pb

from . import tensors
from .errors import NotConnected
from .lower import Lowered
from .transport import DirectWorker, HttpRelay, Transport

URL_ENV = "GENIE_URL"
API_KEY_ENV = "GENIE_API_KEY"
MAX_BIND_BYTES = 16 << 20  # tensor data per BindWeights call (genie-serve takes 32 MiB bodies by default)


@dataclass(slots=True)
class Bound:
    binding_id: str
    weights: tuple[tuple[int, int], ...]  # (id, _version) of each weight argument it was bound from


class Session:
    """Program RPCs over one transport. Thread-safe: calls are serialised by a lock."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._digests: dict[int, tuple[torch.Tensor, int, str]] = {}  # id -> (the tensor, its _version, sha256)

    @property
    def url(self) -> str:
        return self.transport.url  # type: ignore[attr-defined]

    def place(self, lowered: Lowered) -> None:
        """LoadProgram once per program id; raises ProgramRefused when the worker will not take it."""
        with self._lock:
            if lowered.program_id not in self._loaded:
                self.transport.call("LoadProgram", pb.LoadProgramRequest(program_id=lowered.program_id,
                                                                         program=lowered.program))
                self._loaded.add(lowered.program_id)

    def bind(self, lowered: Lowered, args: list[Any]) -> Bound:
        """Binds the graph's weights by name + sha256; only those the worker lacks travel (at most twice)."""
        weights = self._weights(lowered, args)
        with self._lock:
            response = self._bind(lowered.program_id, weights, send=set())
            if response.missing:
                response = self._bind(lowered.program_id, weights, send=set(response.missing))
            if response.missing:  # evicted meanwhile: send them all
                response = self._bind(lowered.program_id, weights, send=set(weights))
        stamp = tuple((id(args[i]), args[i]._version) for i in lowered.weight_args.values())
        return Bound(response.binding_id, stamp)

    def run(self, lowered: Lowered, bound: Bound, args: list[Any]) -> list[torch.Tensor]:
        request = pb.RunProgramRequest(program_id=lowered.program_id, binding_id=bound.binding_id,
                                       inputs=[tensors.to_pb(args[i]) for i in lowered.input_args])
        try:
            response = self.transport.call("RunProgram", request)
        except NotFound:  # the worker evicted the program or its weights (or restarted): place it again, once
            with self._lock:
                self._loaded.discard(lowered.program_id)
            self.place(lowered)
            bound.binding_id = self.bind(lowered, args).binding_id
            request.binding_id = bound.binding_id
            response = self.transport.call("RunProgram", request)
        return [tensors.from_pb(t) for t in response.outputs]

    def stats(self, program_id: str = "") -> pb.ProgramStatsResponse:
        return self.transport.call("ProgramStats", pb.ProgramStatsRequest(program_id=program_id))

    def close(self) -> None:
        self.transport.close()

    def _bind(self, program_id: str, weights: dict[str, tuple[torch.Tensor, str, bytes]],
              send: set[str]) -> pb.BindWeightsResponse:
        """Names every slot by sha256 in each call; the tensors in `send` travel in chunks of MAX_BIND_BYTES."""
        chunks: list[list[str]] = [[]]
        size = 0
        for name in sorted(send):
            nbytes = len(weights[name][2])
            if chunks[-1] and size + nbytes > MAX_BIND_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(name)
            size += nbytes
        response = None
        for chunk in chunks:
            entries = []
            for name, (tensor, digest, data) in sorted(weights.items()):
                entry = pb.ProgramWeight(name=name, sha256=digest)
                if name in chunk:
                    entry.tensor.CopyFrom(tensors.to_pb(tensor, data))
                entries.append(entry)
            response = self.transport.call("BindWeights", pb.BindWeightsRequest(program_id=program_id,
                                                                                weights=entries))
        assert response is not None
        return response

    def _weights(self, lowered: Lowered, args: list[Any]) -> dict[str, tuple[torch.Tensor, str, bytes]]:
        found = {name: args[i] for name, i in lowered.weight_args.items()} | dict(lowered.constants)
        return {name: self._digest(t) for name, t in found.items()}

    def _digest(self, tensor: torch.Tensor) -> tuple[torch.Tensor, str, bytes]:
        """sha256 of a weight's bytes, hashed again only when the tensor changed (its _version)."""
        data = tensors.raw_bytes(tensor)
        known = self._digests.get(id(tensor))
        if known is not None and known[0] is tensor and known[1] == tensor._version:
            return tensor, known[2], data
        digest = tensors.sha256(data)
        self._digests[id(tensor)] = (tensor, tensor._version, digest)
        return tensor, digest, data


_current: Session | None = None


def connect(url: str | None = None, api_key: str | None = None, *, worker: str | None = None,
            token: str | None = None) -> Session:
    """Names the genie-serve that runs programs (its HTTP URL, as HTTP clients use it), or GENIE_URL /
    GENIE_API_KEY; `worker=HOST:PORT` (with its link `token`) goes straight to one worker instead. Later
    torch.compile(backend="genie") graphs and genie.remote models use this connection."""
    global _current
    if worker is not None:
        session = Session(DirectWorker(worker, token))
    else:
        url = url or os.environ.get(URL_ENV)
        if not url:
            raise NotConnected(f"no genie-serve named: call genie.connect('http://HOST:PORT') or set {URL_ENV}")
        session = Session(HttpRelay(url, api_key or os.environ.get(API_KEY_ENV)))
    if _current is not None:
        _current.close()
    _current = session
    return session


def current() -> Session:
    """The connection genie.connect made, or one from GENIE_URL."""
    return _current if _current is not None else connect()
