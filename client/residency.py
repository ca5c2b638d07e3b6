"""Which outputs of a graph stay on the worker: the semantic profile's answer for a decoder LLM.

A decoder's KV cache is persistent per-request state: each generate step reads the whole cache and appends
one position. Shipped, it would cross the wire twice per step and grow with every token; kept on the worker
(workers/programs/resident.py) a step moves only token ids and logits. The client sees the graph's KV
outputs as placeholders (client/session.py) that the next step passes back by handle.

genie.remote takes the facts from the model's semantic profile in the registry (client/registration.py):
an LLM workload (decoder-only, found by the analyser's patterns) and its LLMShape's KV heads and head size. A
graph output shaped [batch, kv_heads, positions, head_dim] is KV. Without the registry (genie.remote(model,
register=False)) the same facts are read from the model's HF config (for_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .lower import Lowered

if TYPE_CHECKING:
    from genie.semantic import Profile


@dataclass(frozen=True, slots=True)
class KeepKV:
    """Keep outputs shaped as the model's KV cache ([batch, kv_heads, positions, head_dim])."""

    kv_heads: int
    head_dim: int

    def keep(self, lowered: Lowered) -> tuple[int, ...]:
        return tuple(i for i, shape in enumerate(lowered.output_shapes)
                     if len(shape) == 4 and shape[1] == self.kv_heads and shape[3] == self.head_dim)


def for_model(model: Any) -> KeepKV | None:
    """KeepKV for a decoder-only LM with a KV cache (an HF model with generate and an attention config);
    None for anything else (encoders, CNNs, custom modules): their outputs come back whole."""
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "generate", None)):
        return None
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "use_cache", True):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not heads or not hidden:
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return KeepKV(int(kv_heads), int(head_dim))


def for_profile(profile: Profile, model: Any) -> KeepKV | None:
    """KeepKV when the profile is an LLM's and the model has generate (whose steps pass the cache back);
    None for every other workload: outputs come back whole."""
    shape = profile.llm
    if profile.workload_type != "llm" or shape is None or not callable(getattr(model, "generate", None)):
        return None
    return KeepKV(shape.num_kv_heads, shape.head_dim)


class Deferred:
    """The policy of a genie.remote model, known from its first call on (when the profile is read); Dynamo
    compiles a graph only after that call has begun, so every graph sees the resolved policy."""

    def __init__(self) -> None:
        self.policy: KeepKV | None = None

    def keep(self, lowered: Lowered) -> tuple[int, ...]:
        return self.policy.keep(lowered) if self.policy is not None else ()
