"""A connection to genie-serve (or to one worker) and the programs it has placed: load once, bind weights
once, then one RunProgram round trip per graph call.

Outputs a run keeps on the worker (a decoder's KV cache, client/residency.py) come back as placeholders:
tensors of the right dtype and shape, filled with NaN (zeros for integers), that stand for the worker's tensor.
Passed back as an input, a placeholder travels as its handle; dropped, it is released with the next call.
"""

from __future__ import annotations

import os
import threading
from collections import deque
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from genie.errors import InvalidRequest, NotFound
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
        self.client_id = uuid.uuid4().hex  # whose budget on the worker this session's tensors count against
        self._handles: dict[int, tuple[weakref.ref, str, int]] = {}  # id -> (placeholder, handle, _version)
        self._released: deque[tuple[str, str]] = deque()  # (placement, handle) of placeholders dropped since
        self.one_call_first_run = True  # False: a program without weights is placed, bound and run in three
        #                                 calls, as before load_and_run (benchmarks/client_device.py's baseline)

    @property
    def url(self) -> str:
        return self.transport.url  # type: ignore[attr-defined]

    def place(self, lowered: Lowered, placement: str = "") -> None:
        """LoadProgram once per program id; raises ProgramRefused when the worker will not take it.
        `placement`: programs named alike meet on one worker (genie-serve places by it), as those of one
        model must when one's kept outputs feed another."""
        with self._lock:
            if (lowered.program_id, placement) not in self._loaded:
                self.transport.call("LoadProgram", pb.LoadProgramRequest(
                    program_id=lowered.program_id, program=lowered.program, placement=placement,
                    client_id=self.client_id))
                self._loaded.add((lowered.program_id, placement))

    def load_and_run(self, lowered: Lowered, args: list[Any], placement: str = "") -> list[torch.Tensor] | None:
        """For a program with no weights not placed yet: LoadProgram carrying its first run, one round trip
        instead of three. None when it has weights or is placed already (then place, bind and run). Raises
        ProgramRefused when the worker will not take it, or when that first run fails there."""
        if not self.one_call_first_run or not weightless(lowered):
            return None
        with self._lock:
            if (lowered.program_id, placement) in self._loaded:
                return None
        run = self._run_request(lowered, Bound("", ()), args, (), placement)
        response = self.transport.call("LoadProgram", pb.LoadProgramRequest(
            program_id=lowered.program_id, program=lowered.program, placement=placement, client_id=self.client_id,
            run=run))
        with self._lock:
            self._loaded.add((lowered.program_id, placement))
        return self._outputs(response.run, placement)

    def bind(self, lowered: Lowered, args: list[Any], placement: str = "") -> Bound:
        """Binds the graph's weights by name + sha256; only those the worker lacks travel (at most twice). A
        program with no weights needs no binding: no call."""
        if weightless(lowered) and self.one_call_first_run:
            return Bound("", ())
        weights = self._weights(lowered, args)
        with self._lock:
            response = self._bind(lowered.program_id, weights, set(), placement)
            if response.missing:
                response = self._bind(lowered.program_id, weights, set(response.missing), placement)
            if response.missing:  # evicted meanwhile: send them all
                response = self._bind(lowered.program_id, weights, set(weights), placement)
        stamp = tuple((id(args[i]), args[i]._version) for i in lowered.weight_args.values())
        return Bound(response.binding_id, stamp)

    def run(self, lowered: Lowered, bound: Bound, args: list[Any], keep: tuple[int, ...] = (),
            placement: str = "") -> list[torch.Tensor]:
        """One RunProgram; outputs at `keep` stay on the worker and come back as placeholders."""
        request = self._run_request(lowered, bound, args, keep, placement)
        handles = list(request.input_handles)
        try:
            response = self.transport.call("RunProgram", request)
        except NotFound:  # the worker evicted the program or its weights (or restarted): place it again, once
            if any(handles):
                raise  # a tensor kept there may be gone too: nothing here can bring it back
            with self._lock:
                self._loaded.discard((lowered.program_id, placement))
            self.place(lowered, placement)
            bound.binding_id = self.bind(lowered, args, placement).binding_id
            request.binding_id = bound.binding_id
            del request.release[:]
            response = self.transport.call("RunProgram", request)
        return self._outputs(response, placement)

    def _run_request(self, lowered: Lowered, bound: Bound, args: list[Any], keep: tuple[int, ...],
                     placement: str) -> pb.RunProgramRequest:
        request = pb.RunProgramRequest(program_id=lowered.program_id, binding_id=bound.binding_id,
                                       keep_outputs=keep, placement=placement, client_id=self.client_id)
        handles = [self.handle_of(args[i]) for i in lowered.input_args]
        for i, handle in zip(lowered.input_args, handles):
            request.inputs.append(pb.Tensor() if handle else tensors.to_pb(args[i]))
        if any(handles):
            request.input_handles.extend(handles)
        request.release.extend(self._take_released(placement))
        return request

    def _outputs(self, response: pb.RunProgramResponse, placement: str) -> list[torch.Tensor]:
        handles_out = list(response.output_handles) or [""] * len(response.outputs)
        return [self._placeholder(t, h, placement) if h else tensors.from_pb(t)
                for t, h in zip(response.outputs, handles_out)]

    def handle_of(self, tensor: Any) -> str:
        """The handle a placeholder stands for, or "" for any other value."""
        entry = self._handles.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return ""
        if tensor._version != entry[2]:
            raise InvalidRequest("a tensor kept on the genie worker (a placeholder, such as a KV cache entry) "
                                 "was changed in place here; its values live on the worker. Keep it unchanged, "
                                 "or run the model with genie.remote(model, keep_kv=False)")
        return entry[1]

    def is_placeholder(self, tensor: Any) -> bool:
        entry = self._handles.get(id(tensor))
        return entry is not None and entry[0]() is tensor

    def release(self) -> None:
        """Frees on the worker the kept tensors whose placeholders were dropped (also done by every run)."""
        for placement in {p for p, _ in list(self._released)}:
            handles = self._take_released(placement)
            if handles:
                self.transport.call("RunProgram", pb.RunProgramRequest(release=handles, placement=placement,
                                                                       client_id=self.client_id))

    def _placeholder(self, msg: pb.Tensor, handle: str, placement: str) -> torch.Tensor:
        dtype = tensors.DTYPES[msg.dtype]
        fill = float("nan") if dtype.is_floating_point else 0
        tensor = torch.full(list(msg.shape), fill, dtype=dtype)
        self._handles[id(tensor)] = (weakref.ref(tensor), handle, tensor._version)
        weakref.finalize(tensor, self._dropped, id(tensor), handle, placement)
        return tensor

    def _dropped(self, key: int, handle: str, placement: str) -> None:
        """Runs when a placeholder is collected (any thread): deque appends need no lock."""
        entry = self._handles.get(key)
        if entry is not None and entry[1] == handle:
            self._handles.pop(key, None)
        self._released.append((placement, handle))

    def _take_released(self, placement: str) -> list[str]:
        taken, others = [], []
        for _ in range(len(self._released)):
            item = self._released.popleft()
            (taken if item[0] == placement else others).append(item)
        self._released.extend(others)
        return [handle for _, handle in taken]

    def stats(self, program_id: str = "", placement: str = "") -> pb.ProgramStatsResponse:
        return self.transport.call("ProgramStats", pb.ProgramStatsRequest(
            program_id=program_id, placement=placement, client_id=self.client_id))

    def close(self) -> None:
        try:
            self.release()
        except Exception:  # closing must not fail on a worker that is gone; its tensors went with it
            pass
        self.transport.close()

    def _bind(self, program_id: str, weights: dict[str, tuple[torch.Tensor, str, bytes]],
              send: set[str], placement: str = "") -> pb.BindWeightsResponse:
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
            response = self.transport.call("BindWeights", pb.BindWeightsRequest(
                program_id=program_id, weights=entries, placement=placement, client_id=self.client_id))
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


def weightless(lowered: Lowered) -> bool:
    return not lowered.weight_args and not lowered.constants


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
