"""The cluster a plan is made for: workers with memory, compute and bandwidth, and the link between them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

from genie.semantic.serial import from_jsonable, to_jsonable


def _positive(owner: str, field_name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}.{field_name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    name: str
    device: str  # "cpu", "cuda", "cuda:1", ...
    memory_bytes: int  # memory available for weights, KV cache and activations
    flops: float  # peak FLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    op_s: float = 0.0  # dispatch seconds per tensor op (0: unknown, the roofline alone)
    module_s: float = 0.0  # seconds per nn.Module call beyond its ops
    call_s: float = 0.0  # seconds a fragment call pays once, whatever its ops: the cold start of a forward that
    #   follows a pause, as served calls do (0: unknown)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("WorkerSpec.name must be a non-empty string")
        owner = f"worker {self.name!r}"
        _positive(owner, "memory_bytes", self.memory_bytes)
        _positive(owner, "flops", self.flops)
        _positive(owner, "bandwidth", self.bandwidth)
        for name in ("op_s", "module_s", "call_s"):
            value = getattr(self, name)
            if value != 0:
                _positive(owner, name, value)

    def fingerprint(self) -> str:
        return _sha256(to_jsonable(self))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerSpec:
        return from_jsonable(cls, d)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    workers: tuple[WorkerSpec, ...]
    link_bandwidth: float  # bytes/s between any two workers

    def __post_init__(self) -> None:
        if not self.workers:
            raise ValueError("ClusterSpec.workers is empty; describe at least one worker")
        names = [w.name for w in self.workers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"ClusterSpec has duplicate worker names {dupes}; give each worker its own name")
        _positive("ClusterSpec", "link_bandwidth", self.link_bandwidth)

    def worker(self, name: str) -> WorkerSpec:
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(f"no worker named {name!r} in the cluster; workers are {[w.name for w in self.workers]}")

    def fingerprint(self) -> str:
        return _sha256(to_jsonable(self))

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterSpec:
        return from_jsonable(cls, d)


def _sha256(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Measured:
    """A worker's speed as it measured it at start-up (its Info)."""

    flops: float  # matmul FLOP/s
    bandwidth: float  # bytes/s of a large copy
    op_s: float = 0.0  # dispatch seconds per tensor op
    module_s: float = 0.0  # seconds per module call
    call_s: float = 0.0  # seconds per fragment call, paid once (a forward after a pause)


def calibrated(cluster: ClusterSpec, measured: dict[str, Measured]) -> ClusterSpec:
    """The cluster with each named worker's speed replaced by what it measured ({name: Measured}, from the
    workers' Info at start-up). Plans are still made and cached with the nominal figures (they must not change
    from start to start); the calibrated cluster re-costs a plan that runs. Calibration reads only the device
    probes, never the serving meters: a prediction checked against a measurement is not fitted to it."""
    workers = tuple(
        replace(w, flops=m.flops, bandwidth=m.bandwidth, op_s=m.op_s, module_s=m.module_s, call_s=m.call_s)
        if (m := measured.get(w.name)) else w
        for w in cluster.workers
    )
    return ClusterSpec(workers, cluster.link_bandwidth)
