"""The engine's contract: what a batched step takes and gives back.

The worker servicer converts protobuf to these dataclasses at the edge (`workers/codec.py`); the engine and
everything inside pass only these. Tensors are torch tensors on the CPU at this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    seed: int | None = None  # per-request seed; the draw for a token depends only on (seed, its position)
    logprobs: int = 0  # 0: none; n >= 1: the sampled token's logprob and the top-n alternatives

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class FragmentSpec:
    """A layer range [layer_start, layer_end) of a decoder-only model, plus embedding and/or head."""

    fragment_id: str
    model_dir: str  # folder with config.json and *.safetensors
    layer_start: int = 0
    layer_end: int = -1  # exclusive; -1 means num_hidden_layers
    has_embedding: bool = True
    has_head: bool = True
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    kv_cache_bytes: int = 256 << 20  # KV budget; blocks are allocated once at load inside it
    block_size: int = 16  # tokens per KV block
    # (file name relative to model_dir, hex sha256) pairs, sorted: the worker hashes each named file before
    # loading and refuses a mismatch. A tuple, not a dict, so the frozen spec stays hashable.
    expected_sha256: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    fragment_id: str
    num_layers: int  # layers this fragment holds
    num_kv_blocks: int
    block_size: int
    weight_bytes: int
    hidden_size: int
    vocab_size: int
    max_context: int  # tokens a sequence may hold
    dtype: str  # the resolved compute dtype, e.g. "bfloat16"


@dataclass(slots=True)
class SeqStep:
    """One sequence's share of a batched step: a prefill chunk or one decode token."""

    seq_id: str
    position: int  # tokens this sequence already holds in this fragment's KV; 0 starts a new sequence
    token_ids: list[int] | None = None  # when the fragment holds the embedding
    hidden: torch.Tensor | None = None  # [n, hidden_size] when it does not
    sample: bool = False  # sample a token after this chunk (the fragment must hold the head)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Blind mode only (genie-bench compare): the sequence's whole KV [layers, 2, position, kv_heads, head_dim]
    # in the compute dtype, run on a temporary sequence that is forgotten after the step.
    kv: torch.Tensor | None = None
    return_kv: bool = False  # send the updated KV back in SeqResult.kv

    @property
    def num_tokens(self) -> int:
        if self.token_ids is not None:
            return len(self.token_ids)
        return 0 if self.hidden is None else int(self.hidden.shape[0])


@dataclass(slots=True)
class SeqResult:
    seq_id: str
    token_id: int | None = None  # set when sampled
    logprob: float | None = None  # set when sampled and logprobs were asked for
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first
    hidden: torch.Tensor | None = None  # [n, hidden_size] when the fragment holds no head
    kv: torch.Tensor | None = None  # when return_kv: [layers, 2, position + n, kv_heads, head_dim]


@dataclass(frozen=True, slots=True)
class FragmentStats:
    fragment_id: str
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_free: int
    sequences: int
    block_size: int
