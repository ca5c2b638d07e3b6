"""The semantic profile: what a model is, as the registry caches it and the planner reads it.

All byte counts are for the dtype of the model's parameters; FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from genie.semantic.serial import from_jsonable, to_jsonable


class WorkloadType(str, enum.Enum):
    LLM = "llm"
    ENCODER = "encoder"
    VISION = "vision"
    RECSYS = "recsys"
    MULTIMODAL = "multimodal"
    AUDIO = "audio"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PatternSummary:
    """One pattern found in the graph: how often, how sure, and what to do about it."""

    name: str
    count: int
    confidence: float
    hints: list[str]
    modules: list[str] = field(default_factory=list)  # module paths where it matched (deduplicated)
    time_ms: float = 0.0  # time its matcher took


@dataclass(frozen=True, slots=True)
class Phase:
    """A part of execution that behaves differently from the others (prefill vs decode, backbone vs head)."""

    name: str  # prefill | decode | backbone | head | branch:<modality> | fusion | forward
    unit: str  # what `flops` and `activation_bytes` are counted per: "token" or "request"
    flops: float  # FLOPs per unit
    weight_bytes: int  # parameter bytes read per step
    activation_bytes: int  # activation bytes written per unit
    kv_bytes_per_token: int = 0  # persistent per-request state written per token (LLM KV cache)
    arithmetic_intensity: float = 0.0  # FLOPs per byte moved in one step at batch 1
    modules: list[str] = field(default_factory=list)  # module path prefixes covered; empty = whole model
    note: str = ""


@dataclass(frozen=True, slots=True)
class CostSummary:
    """Whole-graph cost for the example inputs, unfused (every node reads its inputs and writes its output)."""

    flops: float
    param_bytes: int
    activation_bytes: int  # sum of node output bytes
    bytes_moved: int  # parameter + input + output bytes over all nodes
    arithmetic_intensity: float  # flops / bytes_moved
    dtype_bytes: int  # bytes per element of the parameters

    def step_time(self, flops_per_s: float, bandwidth: float) -> float:
        """Roofline step time in seconds on a device with peak `flops_per_s` and memory `bandwidth` (B/s)."""
        return max(self.flops / flops_per_s, self.bytes_moved / bandwidth)


@dataclass(frozen=True, slots=True)
class Block:
    """A coarse unit the planner places: a decoder layer, an encoder branch, an embedding table, a stage."""

    name: str  # module path ("model.layers.3") or a synthetic name ("<inputs>")
    kind: str  # embedding | layer | head | branch | sparse | dense | fusion | stage | other
    flops: float
    param_bytes: int
    output_bytes: int  # activation bytes leaving the block for the example inputs
    branch: str = ""  # modality of an independent branch ("image", "text"), empty when not a branch
    index: int = -1  # position in its stack (layer number), -1 outside stacks
    feeds: list[str] = field(default_factory=list)  # blocks that consume this block's outputs
    ops: int = 0  # tensor ops the block calls per forward (each costs a dispatch, however small)
    modules: int = 0  # module calls it makes per forward (containers above it count in the first block using them)
    traffic_bytes: int = 0  # activation bytes its ops read and write per example, unfused (weights not counted)
    lookups: int = 0  # embedding lookups among its ops (a worker checks each one's ids before it runs)


@dataclass(frozen=True, slots=True)
class LLMShape:
    """What the planner and the engine need to split and serve a decoder LLM."""

    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int
    layer_param_bytes: int  # per decoder layer
    embedding_param_bytes: int
    head_param_bytes: int  # final norm + LM head not shared with the embedding
    tied_embeddings: bool
    kv_bytes_per_token: int  # 2 (K, V) * layers * kv_heads * head_dim * dtype_bytes
    flops_per_token: float  # decode FLOPs per token at short context


@dataclass(frozen=True, slots=True)
class InputInfo:
    name: str
    shape: list[int]
    dtype: str
    modality: str  # text | image | audio | sparse | dense | unknown


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    workload_type: str  # a WorkloadType value
    confidence: float
    explanation: list[str]
    patterns: list[PatternSummary]
    phases: list[Phase]
    cost: CostSummary
    blocks: list[Block] = field(default_factory=list)
    llm: LLMShape | None = None
    inputs: list[InputInfo] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)  # capture / graph / per-stage analysis times
    graph_nodes: int = 0
    capture_method: str = ""  # "export" or "dispatch"
    analyzer_version: str = ""

    def __post_init__(self) -> None:
        WorkloadType(self.workload_type)  # raises ValueError naming the bad value
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")

    def pattern(self, name: str) -> PatternSummary | None:
        return next((p for p in self.patterns if p.name == name), None)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        return from_jsonable(cls, d)

    def summary(self) -> str:
        top = ", ".join(f"{p.name}x{p.count}" for p in sorted(self.patterns, key=lambda p: -p.count)[:4])
        size = f"{self.cost.param_bytes / 2**20:.1f} MiB params, {self.cost.flops / 1e9:.2f} GFLOP/example"
        extra = f", {self.llm.num_layers} layers, KV {self.llm.kv_bytes_per_token} B/token" if self.llm else ""
        return f"{self.workload_type} ({self.confidence:.0%}): {size}{extra}; patterns: {top or 'none'}"
