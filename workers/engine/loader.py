"""`load_fragment`: checks a FragmentSpec, sizes the KV cache, reads only the needed tensors, pins the cache."""

from __future__ import annotations

import logging
from typing import Any

import torch

from genie.errors import InvalidRequest, ResourceExhausted
from genie.workers.engine.allocator import BlockAllocator
from genie.workers.engine.batch import HeadLayout
from genie.workers.engine.checkpoint import Checkpoint, read_config
from genie.workers.engine.families import family_for
from genie.workers.engine.kernels import make_kernels
from genie.workers.engine.fragment import Fragment
from genie.workers.engine.block_tables import BlockTables
from genie.workers.engine.kv_cache import KVCache
from genie.workers.engine.linear import invariant_op, linear_factory, onednn_usable
from genie.workers.engine.model import LoadRequest, ModelDims
from genie.workers.engine.quant import int8_factory
from genie.workers.engine.quant_artifact import INT8_ARTIFACT, Int8Artifact, Int8Checkpoint, open_int8_artifact
from genie.workers.engine.placement import dtype_name, resolve_device, resolve_dtype
from genie.workers.contract import QUANTIZATIONS, FragmentInfo, FragmentSpec

log = logging.getLogger(__name__)


def load_fragment(
    spec: FragmentSpec, device: str | torch.device = "cpu", *, packed: bool | None = None, kernels: str = "auto",
    batch_invariant: bool = True, quantize_head: bool | None = None,
) -> Fragment:
    """Loads layers [layer_start, layer_end) of the model in `spec.model_dir`, plus embedding and/or head.
    `packed` forces oneDNN prepacked linears on or off; None picks them where they are faster (bf16 on CPU).
    `kernels`: "torch" (plain torch ops), "native" (fused CPU kernels, built with g++ on first use and cached,
    see native.py), or "auto": native on CPU where they build (a warning says why when they do not), else torch.
    `batch_invariant`: where the native kernels run this dtype (bf16 with AVX512-BF16, fp32 with AVX-512), every
    matmul and attention gives a token the same bits whatever its batch and prompt chunking (native_gemm.cpp);
    False keeps the batch-dependent kernels (oneDNN, SDPA for prefill).
    `spec.quantization` "int8": the decoder layers' linears in int8 (quant.py), read from the registry's int8
    artifact where the model folder has one (quant_artifact.py), else quantised here from the checkpoint's
    weights, to the same bits; with the native kernels they stay batch-invariant. Llama-family heads are int8
    too (quantised here from the compute-dtype copy, tied or not): `quantize_head` None follows the spec, False
    keeps the head in the compute dtype (benchmarks/quantization.py measures both)."""
    _check_spec(spec)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dtype = resolve_dtype(spec.dtype, device)
    family = family_for(read_config(spec.model_dir).get("model_type"))
    config = _hf_config(spec.model_dir)
    dims = family.dims(config)
    start, end = _layer_range(spec, dims)
    bytes_per_block = KVCache.bytes_per_block(end - start, spec.block_size, dims.num_kv_heads, dims.head_dim, dtype)
    num_blocks = _num_blocks(spec, bytes_per_block)
    max_context = min(dims.max_positions, num_blocks * spec.block_size)
    use_packed = onednn_usable(device, dtype) and (packed is None or packed)
    ops = make_kernels(kernels, device)
    invariant = batch_invariant and invariant_op(getattr(ops, "ops", None), dtype) is not None
    if invariant:
        ops.per_token = True  # NativeKernels: attention token by token, as the invariant matmuls need
    with torch.no_grad(), Checkpoint(spec.model_dir) as checkpoint:
        artifact = open_int8_artifact(spec)
        request = LoadRequest(
            checkpoint=checkpoint if artifact is None else Int8Checkpoint(checkpoint, artifact),
            config=config,
            dims=dims,
            layer_start=start,
            layer_end=end,
            has_embedding=spec.has_embedding,
            has_head=spec.has_head,
            dtype=dtype,
            device=device,
            linear=linear_factory(use_packed, dtype, getattr(ops, "ops", None), invariant),
            kernels=ops,
            max_context=max_context,
            quantized=int8_factory(dtype, getattr(ops, "ops", None)) if spec.quantization == "int8" else None,
            quantize_head=spec.quantization == "int8" if quantize_head is None else quantize_head,
        )
        model = family.load(request)
        _log_int8(spec, artifact)
        kv = _allocate_kv(spec, end - start, num_blocks, dims, dtype, device)
    info = FragmentInfo(
        fragment_id=spec.fragment_id,
        num_layers=end - start,
        num_kv_blocks=num_blocks,
        block_size=spec.block_size,
        weight_bytes=model.weight_bytes,
        hidden_size=dims.hidden_size,
        vocab_size=dims.vocab_size,
        max_context=max_context,
        dtype=dtype_name(dtype),
    )
    tables = BlockTables(BlockAllocator(num_blocks), spec.block_size)
    heads = HeadLayout(dims.num_kv_heads, dims.num_heads // dims.num_kv_heads, dtype, device)
    return Fragment(spec, info, model, kv, tables, heads, ops)


def _log_int8(spec: FragmentSpec, artifact: Int8Artifact | None) -> None:
    if artifact is not None and artifact.used:
        log.info("fragment %s: %d int8 weights read from the registry's %s, none quantised here",
                 spec.fragment_id, artifact.used, INT8_ARTIFACT)
    elif spec.quantization == "int8":
        log.info("fragment %s: int8 weights quantised at load (the model folder has no usable %s)",
                 spec.fragment_id, INT8_ARTIFACT)


def _hf_config(model_dir: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest(f"cannot read the model config in {model_dir}: {exc}") from None


def _layer_range(spec: FragmentSpec, dims: ModelDims) -> tuple[int, int]:
    end = dims.num_layers if spec.layer_end == -1 else spec.layer_end
    if not 0 <= spec.layer_start < end <= dims.num_layers:
        raise InvalidRequest(
            f"fragment '{spec.fragment_id}': layer range [{spec.layer_start}, {spec.layer_end}) is not a non-empty "
            f"range within the model's {dims.num_layers} layers (layer_end -1 means the last layer)"
        )
    return spec.layer_start, end


def _check_spec(spec: FragmentSpec) -> None:
    if not isinstance(spec.fragment_id, str) or not spec.fragment_id:
        raise InvalidRequest(f"fragment_id must be a non-empty string, got {spec.fragment_id!r}")
    if spec.block_size < 1:
        raise InvalidRequest(f"fragment '{spec.fragment_id}': block_size must be >= 1, got {spec.block_size}")
    if spec.quantization not in QUANTIZATIONS:
        raise InvalidRequest(
            f"fragment '{spec.fragment_id}': quantization {spec.quantization!r} is unknown; "
            f"use one of {', '.join(QUANTIZATIONS)}"
        )
    if spec.kv_cache_bytes < 1:
        raise InvalidRequest(f"fragment '{spec.fragment_id}': kv_cache_bytes must be > 0, got {spec.kv_cache_bytes}")


def _num_blocks(spec: FragmentSpec, bytes_per_block: int) -> int:
    num_blocks = spec.kv_cache_bytes // bytes_per_block
    if num_blocks < 1:
        raise InvalidRequest(
            f"fragment '{spec.fragment_id}': kv_cache_bytes={spec.kv_cache_bytes} is smaller than one KV block "
            f"({bytes_per_block} bytes for {spec.block_size} tokens over this fragment's layers); "
            f"give it at least {bytes_per_block} bytes"
        )
    return num_blocks


def _allocate_kv(
    spec: FragmentSpec, layers: int, num_blocks: int, dims: ModelDims, dtype: torch.dtype, device: torch.device
) -> KVCache:
    try:
        return KVCache(layers, num_blocks, spec.block_size, dims.num_kv_heads, dims.head_dim, dtype, device)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        raise ResourceExhausted(
            f"fragment '{spec.fragment_id}': cannot allocate its KV cache of {spec.kv_cache_bytes} bytes on {device} "
            f"({exc}); lower kv_cache_bytes"
        ) from None
