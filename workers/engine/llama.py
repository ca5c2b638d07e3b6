"""The Llama family (llama, mistral, qwen2, SmolLM): RMSNorm, RoPE, GQA, gated SiLU MLP, optional biases.

At load q/k/v become one matmul and gate/up another: at batch 1 each oneDNN matmul call costs ~12 us besides
reading its weights, more than the elementwise SiLU-and-multiply that the wider matmul leaves behind. On the
batch-invariant native kernels a whole layer is one native call (native_layer.cpp) instead of nine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genie.errors import InvalidRequest
from genie.workers.engine.batch import AttnBatch
from genie.workers.engine.kernels import HeadShape
from genie.workers.engine.kv_cache import KVCache
from genie.workers.engine.linear import InvariantLinear, Linear, linear_bytes, tensor_bytes
from genie.workers.engine.model import LoadRequest, ModelDims
from genie.workers.engine.rope import Rope


@dataclass(frozen=True, slots=True)
class LlamaFamily:
    qkv_bias: bool = False  # qwen2 has q/k/v biases whatever its config says
    prefixes: tuple[str, ...] = ("model.", "")

    def dims(self, config: Any) -> ModelDims:
        heads = config.num_attention_heads
        max_positions = config.max_position_embeddings
        window = getattr(config, "sliding_window", None)
        return ModelDims(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            vocab_size=config.vocab_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            max_positions=min(max_positions, window) if window else max_positions,
        )

    def load(self, request: LoadRequest) -> LlamaModel:
        act = getattr(request.config, "hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise InvalidRequest(f"hidden_act {act!r} is not supported for Llama-family models; supported: silu")
        return LlamaModel(request, self)


class LlamaLayer:
    __slots__ = ("input_norm", "qkv", "o", "post_norm", "gate_up", "down", "shape", "eps", "kernels", "fused")

    def __init__(self, request: LoadRequest, family: LlamaFamily, prefix: str) -> None:
        cfg, dims, t = request.config, request.dims, request.tensor
        attn_bias = bool(getattr(cfg, "attention_bias", False))
        mlp_bias = bool(getattr(cfg, "mlp_bias", False))
        self.input_norm = t(f"{prefix}input_layernorm.weight")
        self.post_norm = t(f"{prefix}post_attention_layernorm.weight")
        self.qkv = _fused(request, [f"{prefix}self_attn.{p}_proj" for p in "qkv"], attn_bias or family.qkv_bias)
        self.o = _fused(request, [f"{prefix}self_attn.o_proj"], attn_bias)
        self.gate_up = _fused(request, [f"{prefix}mlp.gate_proj", f"{prefix}mlp.up_proj"], mlp_bias)
        self.down = _fused(request, [f"{prefix}mlp.down_proj"], mlp_bias)
        self.shape = HeadShape(dims.num_heads, dims.num_kv_heads, dims.head_dim)
        self.eps = cfg.rms_norm_eps
        self.kernels = request.kernels
        self.fused = self._fused_weights()

    def __call__(self, x: torch.Tensor, batch: AttnBatch, rotary: object, caches: tuple) -> torch.Tensor:
        kernels = self.kernels
        if self.fused is not None and batch.rows is not None and kernels.fuse_layers:
            return kernels.decoder_layer(x, self.fused, rotary, batch, caches, self.shape, self.shape.dim**-0.5)
        h = kernels.rms_norm(x, self.input_norm, self.eps)
        qkv = self.qkv(h)  # [T, (heads + 2 * kv_heads) * D]
        attn = kernels.attend(qkv, self.shape, rotary, batch, caches, self.shape.dim**-0.5)
        x = self.o.add(attn, x)
        h = kernels.rms_norm(x, self.post_norm, self.eps)
        return self.down.add(kernels.silu_mul(self.gate_up(h)), x)

    def _fused_weights(self) -> tuple | None:
        """The arguments of the one-call layer (NativeKernels.decoder_layer) that stay the same every step, when
        it runs here: the native layer op is built and every linear is the invariant native matmul."""
        linears = (self.qkv, self.o, self.gate_up, self.down)
        native = getattr(self.kernels, "fused_layer", None) is not None
        if not native or not all(isinstance(lin, InvariantLinear) for lin in linears):
            return None
        qkv, o, gate_up, down = linears
        return (self.input_norm, self.post_norm, self.eps, qkv.packed, qkv.out_features, qkv.bias, o.packed, o.bias,
                gate_up.packed, gate_up.out_features, gate_up.bias, down.packed, down.bias)


class LlamaModel:
    def __init__(self, request: LoadRequest, family: LlamaFamily) -> None:
        ckpt, dims, t = request.checkpoint, request.dims, request.tensor
        prefix = ckpt.find_prefix(family.prefixes, "layers.")
        self.layers = [
            LlamaLayer(request, family, f"{prefix}layers.{i}.") for i in range(request.layer_start, request.layer_end)
        ]
        self.rope = Rope(request.config, dims.head_dim, request.max_context, request.dtype, request.device)
        tied = bool(request.config.tie_word_embeddings)
        need_table = request.has_embedding or (request.has_head and tied)
        table = t(f"{prefix}embed_tokens.weight") if need_table else None
        self.embedding = table if request.has_embedding else None
        self.norm, self.head = None, None
        if request.has_head:
            self.norm = t(f"{prefix}norm.weight")
            head = table if tied else t("lm_head.weight")
            quantized = request.quantized if request.quantize_head else None
            # quantised from the compute-dtype copy: a tied table is held in it for the embedding anyway
            self.head = quantized(head.float(), None) if quantized is not None else request.linear(head, None)
        self.eps = request.config.rms_norm_eps
        self.kernels = request.kernels
        linears = [lin for layer in self.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        linears.append(self.head)
        norms = [self.norm, *(n for layer in self.layers for n in (layer.input_norm, layer.post_norm))]
        shared = self.embedding is not None and self.head is not None and self.head.shares(self.embedding)
        # per decode step: the embedding is read one row per token
        self.read_bytes = tensor_bytes(*norms) + linear_bytes(*linears, read=True)
        held_table = 0 if shared else tensor_bytes(self.embedding)
        self.weight_bytes = tensor_bytes(*norms) + linear_bytes(*linears) + held_table

    def embed(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.embedding)

    def forward(self, x: torch.Tensor, batch: AttnBatch, kv: KVCache) -> torch.Tensor:
        rotary = self.kernels.rope_step(self.rope, batch)
        for layer, keys, values in zip(self.layers, kv.keys, kv.values):
            x = layer(x, batch, rotary, (keys, values))
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.kernels.rms_norm(x, self.norm, self.eps))


def _fused(request: LoadRequest, names: list[str], bias: bool) -> Linear:
    """One linear over the concatenated output rows of several projections ([out_1 + out_2 + ..., in])."""
    get, (make, dtype) = request.checkpoint.get_many, request.layer_linear()
    weight = torch.cat(get([f"{n}.weight" for n in names], dtype, request.device))
    b = torch.cat(get([f"{n}.bias" for n in names], dtype, request.device)) if bias else None
    return make(weight, b)
