"""Costs of contiguous decoder-layer ranges of an LLM, and the layer partitioner for pipelines.

All per-token FLOPs come from the profile's measured block FLOPs; memory counts weights plus the KV cache the
stage must hold for `batch` sequences of `context_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

from genie.semantic.cluster import WorkerSpec
from genie.semantic.cost import step_time
from genie.semantic.planner.options import PlanOptions
from genie.semantic.profile import Profile


@dataclass(frozen=True, slots=True)
class Stage:
    worker: WorkerSpec
    start: int  # first decoder layer
    end: int  # one past the last decoder layer
    embedding: bool
    head: bool


class LLMCosts:
    def __init__(self, profile: Profile, options: PlanOptions) -> None:
        if profile.llm is None:
            raise ValueError(f"{profile.name}: the profile has no LLM structure (llm is None)")
        self.shape = s = profile.llm
        self.options = options
        layers = [b for b in profile.blocks if b.kind == "layer"]
        if len(layers) != s.num_layers:
            raise ValueError(f"{profile.name}: profile lists {len(layers)} layer blocks for {s.num_layers} layers")
        first = profile.blocks.index(layers[0])
        last = profile.blocks.index(layers[-1])
        total = sum(b.flops for b in profile.blocks) or 1.0
        per_token = s.flops_per_token / total  # FLOPs per token per FLOP of the example
        self.layer_flops = [b.flops * per_token for b in layers]
        self.layer_bytes = [b.param_bytes for b in layers]
        self.embed_flops = sum(b.flops for b in profile.blocks[:first]) * per_token
        self.head_flops = sum(b.flops for b in profile.blocks[last + 1 :]) * per_token
        self.kv_layer = s.kv_bytes_per_token / s.num_layers
        self.hidden_bytes = s.hidden_size * s.dtype_bytes  # one token's hidden state

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    def weights(self, start: int, end: int, embedding: bool, head: bool) -> int:
        """Parameter bytes resident on a stage. A tied LM head needs the embedding table on its stage too."""
        s = self.shape
        total = sum(self.layer_bytes[start:end]) + (s.embedding_param_bytes if embedding else 0)
        if head:
            total += s.head_param_bytes + (s.embedding_param_bytes if s.tied_embeddings and not embedding else 0)
        return total

    def kv_bytes(self, start: int, end: int, sequences: int, tokens: int) -> int:
        return int(self.kv_layer * (end - start) * sequences * tokens)

    def memory(self, start: int, end: int, embedding: bool, head: bool) -> int:
        o = self.options
        return self.weights(start, end, embedding, head) + self.kv_bytes(start, end, o.batch, o.context_tokens)

    def flops(self, stage: Stage) -> float:
        """FLOPs per token of a stage."""
        f = sum(self.layer_flops[stage.start : stage.end])
        return f + (self.embed_flops if stage.embedding else 0.0) + (self.head_flops if stage.head else 0.0)

    def step_bytes(self, stage: Stage) -> int:
        """Weight bytes one step reads: the layers and the LM head, not the embedding table (rows only)."""
        s = self.shape
        head = s.head_param_bytes + (s.embedding_param_bytes if s.tied_embeddings else 0) if stage.head else 0
        return sum(self.layer_bytes[stage.start : stage.end]) + head

    def decode_time(self, stage: Stage, batch: int, context: int) -> float:
        kv = self.kv_bytes(stage.start, stage.end, batch, context)
        w = stage.worker
        return step_time(self.flops(stage) * batch, self.step_bytes(stage) + kv, w.flops, w.bandwidth)

    def prefill_time(self, stage: Stage, tokens: int) -> float:
        kv = self.kv_bytes(stage.start, stage.end, 1, tokens)
        w = stage.worker
        return step_time(self.flops(stage) * tokens, self.step_bytes(stage) + kv, w.flops, w.bandwidth)


def fits_whole(costs: LLMCosts, worker: WorkerSpec) -> bool:
    return costs.memory(0, costs.num_layers, True, True) <= costs.options.usable(worker.memory_bytes)


def partition(costs: LLMCosts, workers: list[WorkerSpec]) -> list[Stage] | None:
    """Fewest stages that hold the model on `workers` (largest first), layers spread as evenly as memory allows."""
    greedy = _fill(costs, workers, costs.num_layers)
    if greedy is None:
        return None
    used = [st.worker for st in greedy]
    low = -(-costs.num_layers // len(used))
    for cap in range(low, costs.num_layers + 1):
        balanced = _fill(costs, used, cap)
        if balanced is not None and len(balanced) == len(used):
            return balanced
    return greedy


def _fill(costs: LLMCosts, workers: list[WorkerSpec], cap: int) -> list[Stage] | None:
    """Greedy: each worker in turn takes as many following layers (at most `cap`) as its memory holds."""
    stages: list[Stage] = []
    start, total = 0, costs.num_layers
    for w in workers:
        if start == total:
            break
        room = costs.options.usable(w.memory_bytes)
        first = not stages
        for n in range(min(cap, total - start), 0, -1):
            end = start + n
            if costs.memory(start, end, first, end == total) <= room:
                stages.append(Stage(w, start, end, first, end == total))
                start = end
                break
        else:
            return None
    return stages if start == total else None
