"""The execution plan: fragments of a model, where each runs, what crosses the network, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genie.semantic.serial import from_jsonable, to_jsonable

STRATEGIES = ("replicas", "pipeline", "branch_parallel", "recsys_split", "disaggregated", "single")


@dataclass(frozen=True, slots=True)
class PlanFragment:
    fragment_id: str
    worker: str  # a WorkerSpec.name
    replica: int
    stage: int  # order inside the replica; stage i feeds stage i + 1
    layer_start: int | None  # LLM decoder layers [layer_start, layer_end); None outside LLMs
    layer_end: int | None
    has_embedding: bool
    has_head: bool
    nodes: list[str]  # module paths (profile block names) this fragment runs, outside LLMs
    reason: str
    role: str = "all"  # all | prefill | decode | branch:<modality> | fusion | sparse | dense
    param_bytes: int = 0
    memory_bytes: int = 0  # params + the KV cache / activations reserved for it
    kv_bytes_per_token: int = 0  # KV of its own layers, kept on its worker (co-located with the layers)
    flops: float = 0.0  # per token for LLM fragments, per request otherwise


@dataclass(frozen=True, slots=True)
class Transfer:
    src: str  # fragment_id
    dst: str  # fragment_id
    what: str  # "hidden states", "KV cache handoff", "image embedding", ...
    bytes_per_token: int  # 0 when the transfer happens once per request
    bytes_per_request: int  # for a request of the planning sequence length
    reason: str


@dataclass(frozen=True, slots=True)
class Prediction:
    latency_s: float  # one request end to end at batch 1 (LLM: prefill + one decode step)
    throughput: float  # in `unit`, whole cluster, at the planning batch
    unit: str  # "tokens/s" or "requests/s"
    detail: dict[str, float] = field(default_factory=dict)  # ttft_s, tpot_s, per-stage times...


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    strategy: str
    fragments: list[PlanFragment]
    transfers: list[Transfer]
    predicted: Prediction
    reasons: list[str]
    cluster_fingerprint: str = ""
    analyzer_version: str = ""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown plan strategy {self.strategy!r}; expected one of {STRATEGIES}")

    def fragments_on(self, worker: str) -> list[PlanFragment]:
        return [f for f in self.fragments if f.worker == worker]

    def replicas(self) -> list[list[PlanFragment]]:
        """Fragments grouped by replica, each group in stage order."""
        ids = sorted({f.replica for f in self.fragments})
        return [sorted((f for f in self.fragments if f.replica == r), key=lambda f: f.stage) for r in ids]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return from_jsonable(cls, d)

    def summary(self) -> str:
        workers = len({f.worker for f in self.fragments})
        p = self.predicted
        return (
            f"{self.strategy}: {len(self.fragments)} fragment(s) on {workers} worker(s), "
            f"latency {p.latency_s * 1e3:.2f} ms, {p.throughput:.1f} {p.unit}; {self.reasons[0] if self.reasons else ''}"
        )
