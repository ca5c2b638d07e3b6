"""GPT-2: learned positions, LayerNorm, biases everywhere, gelu_new, Conv1D weights stored [in, out]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from genie.errors import InvalidRequest
from genie.workers.engine.batch import AttnBatch
from genie.workers.engine.kernels import HeadShape
from genie.workers.engine.kv_cache import KVCache
from genie.workers.engine.linear import Linear, linear_bytes, tensor_bytes
from genie.workers.engine.model import LoadRequest, ModelDims


@dataclass(frozen=True, slots=True)
class GPT2Family:
    prefixes: tuple[str, ...] = ("transformer.", "")

    def dims(self, config: Any) -> ModelDims:
        heads = config.n_head
        return ModelDims(
            num_layers=config.n_layer,
            hidden_size=config.n_embd,
            vocab_size=config.vocab_size,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.n_embd // heads,
            max_positions=config.n_positions,
        )

    def load(self, request: LoadRequest) -> GPT2Model:
        act = request.config.activation_function
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise InvalidRequest(f"activation_function {act!r} is not supported for GPT-2; supported: gelu_new")
        return GPT2Model(request, self)


class GPT2Layer:
    __slots__ = ("ln_1", "c_attn", "c_proj", "ln_2", "c_fc", "mlp_proj", "shape", "scale", "eps", "kernels")

    def __init__(self, request: LoadRequest, prefix: str, index: int) -> None:
        cfg, t = request.config, request.tensor
        self.ln_1 = (t(f"{prefix}ln_1.weight"), t(f"{prefix}ln_1.bias"))
        self.ln_2 = (t(f"{prefix}ln_2.weight"), t(f"{prefix}ln_2.bias"))
        self.c_attn = _conv1d(request, f"{prefix}attn.c_attn")
        self.c_proj = _conv1d(request, f"{prefix}attn.c_proj")
        self.c_fc = _conv1d(request, f"{prefix}mlp.c_fc")
        self.mlp_proj = _conv1d(request, f"{prefix}mlp.c_proj")
        head_dim = cfg.n_embd // cfg.n_head
        self.shape = HeadShape(cfg.n_head, cfg.n_head, head_dim)
        self.kernels = request.kernels
        self.scale = (head_dim**-0.5 if cfg.scale_attn_weights else 1.0) / (
            index + 1 if cfg.scale_attn_by_inverse_layer_idx else 1
        )
        self.eps = cfg.layer_norm_epsilon

    def __call__(self, x: torch.Tensor, batch: AttnBatch, caches: tuple) -> torch.Tensor:
        hidden = x.shape[1]
        h = F.layer_norm(x, (hidden,), *self.ln_1, self.eps)
        attn = self.kernels.attend(self.c_attn(h), self.shape, None, batch, caches, self.scale)  # qkv: [T, 3 * hidden]
        x = self.c_proj.add(attn, x)
        h = F.layer_norm(x, (hidden,), *self.ln_2, self.eps)
        return self.mlp_proj.add(self.c_fc.act(h, "gelu_tanh"), x)


class GPT2Model:
    def __init__(self, request: LoadRequest, family: GPT2Family) -> None:
        ckpt, t = request.checkpoint, request.tensor
        prefix = ckpt.find_prefix(family.prefixes, "h.")
        self.layers = [GPT2Layer(request, f"{prefix}h.{i}.", i) for i in range(request.layer_start, request.layer_end)]
        tied = bool(request.config.tie_word_embeddings)
        need_table = request.has_embedding or (request.has_head and tied)
        table = t(f"{prefix}wte.weight") if need_table else None
        self.wte = table if request.has_embedding else None
        self.wpe = t(f"{prefix}wpe.weight") if request.has_embedding else None
        self.ln_f, self.head = None, None
        if request.has_head:
            self.ln_f = (t(f"{prefix}ln_f.weight"), t(f"{prefix}ln_f.bias"))
            self.head = request.linear(table if tied else t("lm_head.weight"), None)
        self.eps = request.config.layer_norm_epsilon
        linears = [lin for layer in self.layers for lin in (layer.c_attn, layer.c_proj, layer.c_fc, layer.mlp_proj)]
        linears.append(self.head)
        norms = [*(self.ln_f or ()), *(n for layer in self.layers for n in (*layer.ln_1, *layer.ln_2))]
        shared = self.wte is not None and self.head is not None and self.head.shares(self.wte)
        # per decode step: the embeddings are read one row per token
        self.read_bytes = tensor_bytes(*norms) + linear_bytes(*linears, read=True)
        held_tables = tensor_bytes(self.wpe) + (0 if shared else tensor_bytes(self.wte))
        self.weight_bytes = tensor_bytes(*norms) + linear_bytes(*linears) + held_tables

    def embed(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.wte) + F.embedding(positions, self.wpe)

    def forward(self, x: torch.Tensor, batch: AttnBatch, kv: KVCache) -> torch.Tensor:
        for layer, keys, values in zip(self.layers, kv.keys, kv.values):
            x = layer(x, batch, (keys, values))
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.layer_norm(x, (x.shape[-1],), *self.ln_f, self.eps))


def _conv1d(request: LoadRequest, name: str) -> Linear:
    make, dtype = request.layer_linear()
    get = request.checkpoint.get
    weight = get(f"{name}.weight", dtype, request.device).t()  # Conv1D stores [in, out]; linears take [out, in]
    return make(weight.contiguous(), get(f"{name}.bias", dtype, request.device))
