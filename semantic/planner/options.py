"""What the planner assumes about the traffic it plans for."""

from __future__ import annotations

from dataclasses import dataclass

# What a model entry may pin (`strategy:` in the config): "auto" lets the planner choose.
PINNABLE = ("auto", "replicas", "pipeline", "branch_parallel", "recsys_split", "disaggregated")


@dataclass(frozen=True, slots=True)
class PlanOptions:
    batch: int = 8  # sequences decoded together (LLM) or requests per batch (other workloads)
    prompt_tokens: int = 512  # prompt length costed for prefill and for per-request transfers
    context_tokens: int = 2048  # KV cache reserved per sequence, in tokens
    output_tokens: int = 256  # tokens generated per request; spreads one prefill over the decode steps
    memory_headroom: float = 0.1  # fraction of each worker's memory left for activations and the runtime
    ttft_slo_s: float | None = None  # time-to-first-token objective, seconds
    tpot_slo_s: float | None = None  # time-per-output-token objective, seconds
    disaggregate: bool | None = None  # prefill and decode on separate workers: None decides from cost and SLOs
    strategy: str = "auto"  # one of PINNABLE: a pinned strategy is planned or refused with the reason

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_tokens", "context_tokens", "output_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PlanOptions.{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.memory_headroom < 1.0:
            raise ValueError(f"PlanOptions.memory_headroom must be in [0, 1), got {self.memory_headroom!r}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"PlanOptions.{name} must be > 0 seconds or None, got {value!r}")

        if self.strategy not in PINNABLE:
            raise ValueError(f"PlanOptions.strategy must be one of {', '.join(PINNABLE)}, got {self.strategy!r}")

    def usable(self, memory_bytes: int) -> int:
        """Bytes of a worker's memory the plan may fill."""
        return int(memory_bytes * (1.0 - self.memory_headroom))
