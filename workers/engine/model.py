"""What every model family provides: its dimensions, and a loaded fragment that embeds, runs layers, predicts."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

import torch

from genie.workers.engine.batch import AttnBatch
from genie.workers.engine.checkpoint import Checkpoint
from genie.workers.engine.kernels import Kernels
from genie.workers.engine.kv_cache import KVCache
from genie.workers.engine.linear import Linear


@dataclass(frozen=True, slots=True)
class ModelDims:
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int  # the longest context the model supports (capped by a sliding window, if any)


@dataclass(frozen=True, slots=True)
class LoadRequest:
    checkpoint: Checkpoint
    config: Any  # the transformers PretrainedConfig read from config.json
    dims: ModelDims
    layer_start: int
    layer_end: int
    has_embedding: bool
    has_head: bool
    dtype: torch.dtype
    device: torch.device
    linear: Callable[[torch.Tensor, torch.Tensor | None], Linear]  # weight [out, in], bias -> layer (linear.py)
    kernels: Kernels  # torch ops or the fused native kernels, for norms and attention
    max_context: int  # positions that need precomputed tables (RoPE)
    # weight [out, in] in fp32, bias -> a decoder layer's linear, when they are quantised (quant.py); None: `linear`
    quantized: Callable[[torch.Tensor, torch.Tensor | None], Linear] | None = None
    quantize_head: bool = False  # Llama family: build the head with `quantized` too (an experiment, off by default)

    def layer_linear(self) -> tuple[Callable[[torch.Tensor, torch.Tensor | None], Linear], torch.dtype]:
        """How a decoder layer's linears are built, and the dtype to read their weights in."""
        return (self.quantized, torch.float32) if self.quantized is not None else (self.linear, self.dtype)

    def tensor(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(name, self.dtype, self.device)


class FragmentModel(Protocol):
    """The weights of one fragment and the maths of its family. Token rows are flattened over the batch."""

    weight_bytes: int  # held in memory
    read_bytes: int  # read by one decode step: all but the embedding tables, of which it reads single rows

    def embed(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[T] ids and positions -> [T, hidden]."""

    def forward(self, x: torch.Tensor, batch: AttnBatch, kv: KVCache) -> torch.Tensor:
        """[T, hidden] through this fragment's layers, writing their K/V into the cache -> [T, hidden]."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[S, hidden] -> [S, vocab] (final norm, then the head)."""


class Family(Protocol):
    def dims(self, config: Any) -> ModelDims: ...

    def load(self, request: LoadRequest) -> FragmentModel: ...
