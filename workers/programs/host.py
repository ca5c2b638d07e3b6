"""A worker's programs: checked and cached by id, weights bound by name + sha256 and resident, runs counted.

WorkerServicer's LoadProgram / BindWeights / RunProgram / ProgramStats handlers delegate here (on its engine
thread), so these calls pass the same link guard as every other worker RPC. Protobuf stops at this class.
Outputs a run is asked to keep stay here by handle (resident.py); what a client may take is bounded by
ProgramLimits (limits.py).
"""

from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import dataclass, fields

import torch

from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.protos import worker_pb2 as pb
from genie.workers import codec

from .cache import ByteLRU
from .interpreter import check_inputs, check_weight, run_program
from .limits import ProgramLimits
from .resident import ResidentTensors, nbytes
from .sizes import check_sizes
from .wire import Program, Slot, parse_program

Key = tuple[str, torch.dtype, tuple[int, ...]]  # a weight's sha256, dtype and shape

DEFAULT_PROGRAM_BYTES = 256 << 20  # JSON text of cached programs (ProgramLimits.program_bytes)
DEFAULT_WEIGHT_BYTES = 8 << 30  # tensor data of bound weights (ProgramLimits.weight_bytes)


@dataclass(slots=True)
class Counters:
    program_id: str
    rpcs: int = 0
    runs: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    weight_bytes_in: int = 0
    last_run_bytes_in: int = 0
    last_run_bytes_out: int = 0


@dataclass(frozen=True, slots=True)
class Binding:
    program_id: str
    weights: dict[str, torch.Tensor]
    client: str  # whose budget its bytes count against: the client that bound it first
    size: int


class ProgramHost:
    def __init__(self, device: torch.device, program_bytes: int = DEFAULT_PROGRAM_BYTES,
                 weight_bytes: int = DEFAULT_WEIGHT_BYTES, limits: ProgramLimits | None = None) -> None:
        self._device = device
        self.limits = limits or ProgramLimits(program_bytes=program_bytes, weight_bytes=weight_bytes)
        self._programs: ByteLRU[Program] = ByteLRU(self.limits.program_bytes)
        self._bindings: ByteLRU[Binding] = ByteLRU(self.limits.weight_bytes)
        self._kept = ResidentTensors(self.limits.client_bytes)
        # (sha256, dtype, shape) -> a tensor some live binding holds, so a weight another binding already brought
        # need not travel. Equal bytes do not make equal tensors: int64 zeros and float32 zeros hash alike.
        self._resident: weakref.WeakValueDictionary[Key, torch.Tensor] = weakref.WeakValueDictionary()
        # program id -> key -> tensors sent by a BindWeights that left slots missing (weights sent in chunks)
        self._pending: dict[str, dict[Key, torch.Tensor]] = {}
        self._counters: dict[str, Counters] = {}

    def load(self, request: pb.LoadProgramRequest) -> pb.LoadProgramResponse:
        program = self._programs.get(request.program_id)
        cached = program is not None
        if program is None:
            program = parse_program(request.program, request.program_id)
            if not self._programs.fits(program.nbytes):
                raise ResourceExhausted(f"program is {program.nbytes} bytes; this worker caches at most "
                                        f"{self._programs.budget}")
            check_sizes(program, self.limits)
            self._programs.put(program.program_id, program, program.nbytes)
        counters = self._count(program.program_id, request)  # refused programs leave no counters behind
        response = pb.LoadProgramResponse(program_id=program.program_id, nodes=len(program.nodes),
                                          weights=len(program.weights), cached=cached)
        if request.HasField("run"):
            if program.weights:
                raise InvalidRequest(f"program {program.program_id[:12]} has {len(program.weights)} weight slots: "
                                     "bind them with BindWeights, then RunProgram; only a program without "
                                     "weights may carry its run in LoadProgram")
            run = request.run
            run.program_id, run.placement, run.client_id = program.program_id, request.placement, request.client_id
            response.run.CopyFrom(self._execute(program, counters, run))
            counters.bytes_out -= response.run.ByteSize()  # counted once below, with the whole response
        counters.bytes_out += response.ByteSize()
        return response

    def bind(self, request: pb.BindWeightsRequest) -> pb.BindWeightsResponse:
        program = self._program(request.program_id)
        counters = self._count(program.program_id, request)
        slots = {slot.name: slot for slot in program.weights}
        given = {w.name: w for w in request.weights}
        unknown = sorted(set(given) - set(slots))
        if unknown or len(given) != len(request.weights):
            raise InvalidRequest(f"BindWeights names {unknown[0][:80] if unknown else 'a weight twice'!r}; the "
                                 f"program has {len(slots)} weight slots, each named once")
        if set(slots) - set(given):
            raise InvalidRequest(f"BindWeights leaves weight {sorted(set(slots) - set(given))[0][:80]!r} unbound; "
                                 "name every slot, with its sha256")
        pending = self._pending.setdefault(program.program_id, {})
        bound, missing, taken = {}, [], 0
        for name, weight in given.items():
            key = (weight.sha256, slots[name].dtype, slots[name].shape)
            tensor = self._weight(weight, slots[name]) if weight.HasField("tensor") else self._held(key)
            if tensor is None:
                missing.append(name)
            else:
                bound[name] = pending[key] = tensor
            taken += len(weight.tensor.data)
        counters.weight_bytes_in += taken
        response = pb.BindWeightsResponse(missing=sorted(missing), weight_bytes=taken)
        if missing:
            self._check_pending()
        else:
            del self._pending[program.program_id]
            response.binding_id = self._keep(program, given, bound, request.client_id)
        counters.bytes_out += response.ByteSize()
        return response

    def run(self, request: pb.RunProgramRequest) -> pb.RunProgramResponse:
        if not request.program_id:
            return self.release(request)
        program = self._program(request.program_id)
        return self._execute(program, self._count(program.program_id, request), request)

    def _execute(self, program: Program, counters: Counters, request: pb.RunProgramRequest) -> pb.RunProgramResponse:
        binding = self._binding(program, request.binding_id)
        if binding is None or binding.program_id != program.program_id:
            raise NotFound(f"no weights bound as {request.binding_id[:16]!r} for program {program.program_id[:12]} "
                           "on this worker (evicted, or never bound); bind them again with BindWeights")
        inputs = self._inputs(request)
        check_inputs(program, inputs)
        keep = set(request.keep_outputs)
        if any(not 0 <= i < len(program.outputs) for i in keep):
            raise InvalidRequest(f"keep_outputs names an output the program lacks; it has {len(program.outputs)}")
        started = time.perf_counter()
        outputs = run_program(program, binding.weights, inputs, self._device, self.limits)
        response = pb.RunProgramResponse(compute_seconds=time.perf_counter() - started)
        room = self.limits.client_bytes - self._weight_bytes(request.client_id)
        for i, out in enumerate(outputs):
            if i in keep:
                response.outputs.add(dtype=codec.DTYPE_NAMES[out.dtype], shape=list(out.shape))
                response.output_handles.append(self._kept.keep(request.client_id, out, room))
            else:
                response.outputs.append(codec.tensor_to_pb(out.cpu()))
                response.output_handles.append("")
        if not keep:
            del response.output_handles[:]
        size = response.ByteSize()
        counters.runs += 1
        counters.bytes_out += size
        counters.last_run_bytes_in, counters.last_run_bytes_out = request.ByteSize(), size
        return response

    def _binding(self, program: Program, binding_id: str) -> Binding | None:
        if not binding_id and not program.weights:  # nothing to bind: every run of it binds the same nothing
            return Binding(program.program_id, {}, "", 0)
        return self._bindings.get(binding_id)

    def release(self, request: pb.RunProgramRequest) -> pb.RunProgramResponse:
        """A RunProgram that names no program only frees the handles in its `release`."""
        self._kept.release(request.client_id, list(request.release))
        return pb.RunProgramResponse()

    def stats(self, request: pb.ProgramStatsRequest) -> pb.ProgramStatsResponse:
        chosen = [c for pid, c in list(self._counters.items()) if not request.program_id or pid == request.program_id]
        kept, kept_bytes = self._kept.usage(request.client_id)
        return pb.ProgramStatsResponse(
            programs=[pb.ProgramCounters(**{f.name: getattr(c, f.name) for f in fields(Counters)}) for c in chosen],
            cached_programs=len(self._programs), cached_program_bytes=self._programs.used,
            resident_weight_bytes=self._bindings.used, resident_tensors=kept, resident_tensor_bytes=kept_bytes,
        )

    def _inputs(self, request: pb.RunProgramRequest) -> list[torch.Tensor]:
        handles = list(request.input_handles)
        if handles and len(handles) != len(request.inputs):
            raise InvalidRequest(f"input_handles has {len(handles)} entries for {len(request.inputs)} inputs; "
                                 "send one per input ('' for an input sent with its data), or none")
        self._kept.release(request.client_id, list(request.release))
        return [self._kept.get(request.client_id, handles[i]) if handles and handles[i]
                else codec.tensor_from_pb(t, f"input {i}") for i, t in enumerate(request.inputs)]

    def _weight_bytes(self, client: str) -> int:
        return sum(b.size for b in self._bindings.values() if b.client == client)

    def _held(self, key: Key) -> torch.Tensor | None:
        tensor = self._resident.get(key)
        if tensor is None:
            tensor = next((p[key] for p in self._pending.values() if key in p), None)
        return tensor

    def _check_pending(self) -> None:
        size = sum(t.numel() * t.element_size() for p in self._pending.values() for t in p.values())
        if size > self._bindings.budget:
            self._pending.clear()
            raise ResourceExhausted(f"weights sent but not yet bound add up to {size} bytes, more than the "
                                    f"{self._bindings.budget} this worker keeps; bind fewer programs at once")

    def _count(self, program_id: str, request: object) -> Counters:
        counters = self._counters.get(program_id)
        if counters is None:
            counters = self._counters[program_id] = Counters(program_id)
        counters.rpcs += 1
        counters.bytes_in += request.ByteSize()  # type: ignore[attr-defined]
        return counters

    def _program(self, program_id: str) -> Program:
        program = self._programs.get(program_id)
        if program is None:
            raise NotFound(f"program {program_id[:16]!r} is not cached on this worker (evicted, or never loaded); "
                           "send it again with LoadProgram")
        return program

    def _weight(self, weight: pb.ProgramWeight, slot: Slot) -> torch.Tensor:
        digest = hashlib.sha256(weight.tensor.data).hexdigest()
        if digest != weight.sha256:
            raise InvalidRequest(f"weight {weight.name[:80]!r}: its bytes hash to {digest[:16]}..., not the sha256 "
                                 f"it was sent with ({weight.sha256[:16]}...)")
        tensor = codec.tensor_from_pb(weight.tensor, f"weight {weight.name[:80]!r}")
        check_weight(slot, tensor)
        resident = self._held((digest, slot.dtype, slot.shape))
        return resident if resident is not None else tensor.to(self._device)

    def _keep(self, program: Program, given: dict[str, pb.ProgramWeight], bound: dict[str, torch.Tensor],
              client: str) -> str:
        slots = {slot.name: slot for slot in program.weights}
        lines = "\n".join(f"{name}={given[name].sha256}" for name in sorted(given))
        binding_id = hashlib.sha256(f"{program.program_id}\n{lines}".encode()).hexdigest()
        known = self._bindings.get(binding_id)
        if known is not None:
            return binding_id
        size = sum(nbytes(t) for t in {id(t): t for t in bound.values()}.values())
        if not self._bindings.fits(size):
            raise ResourceExhausted(f"the program's weights are {size} bytes; this worker keeps at most "
                                    f"{self._bindings.budget} bytes of program weights")
        held = self._weight_bytes(client) + self._kept.usage(client)[1]
        if held + size > self.limits.client_bytes:
            raise ResourceExhausted(f"binding {size} bytes of weights would bring this client to {held + size} "
                                    f"bytes on this worker, past its limit of {self.limits.client_bytes} "
                                    "(weights plus resident tensors)")
        self._bindings.put(binding_id, Binding(program.program_id, bound, client, size), size)
        for name, tensor in bound.items():
            self._resident[(given[name].sha256, slots[name].dtype, slots[name].shape)] = tensor
        return binding_id
