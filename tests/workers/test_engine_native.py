"""The optional native CPU kernels: each op against its torch reference, and whole models against transformers.

Skipped where the kernels cannot be built (no g++); the engine's default path does not use them.
"""

from __future__ import annotations

import pytest
import torch
from test_engine_support import Pipeline, generate, hf_greedy
from transformers import AutoModelForCausalLM

from genie.errors import InvalidRequest
from genie.workers.engine import FragmentSpec, load_fragment
from genie.workers.engine.attention import decode_attention
from genie.workers.engine.batch import HeadLayout, SeqLayout, build_batch
from genie.workers.engine.kernels import HeadShape, NativeKernels, TorchKernels
from genie.workers.engine.native import native_ops
from genie.workers.engine.rope import Rope


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_torch(ops, dtype):
    x, w = torch.randn(5, 576).to(dtype), torch.randn(576).to(dtype)
    ref = torch.nn.functional.rms_norm(x.float(), (576,), w.float(), 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5).float(), ref, atol=tol, rtol=tol)


class _RopeConfig:
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize(
    ("dim", "group", "dtype"),
    [
        (64, 3, torch.bfloat16),  # SmolLM2's heads
        (32, 1, torch.bfloat16),
        (128, 2, torch.bfloat16),
        (128, 4, torch.bfloat16),  # too many accumulators for the grouped value pass: head by head
        (64, 8, torch.bfloat16),
        (64, 4, torch.float16),
        (32, 1, torch.float32),
        (48, 2, torch.float32),
    ],
)
def test_rope_write_and_decode_attention_match_torch(ops, dim, group, dtype):
    """Against TorchKernels on the same mixed step (decodes of different lengths + a prefill chunk);
    head sizes 32, 64 and 128 take the AVX-512 path (bf16 scores with vdpbf16ps where the CPU has it), 48 the
    portable one."""
    kv_heads, heads, block = 2, 2 * group, 4
    rope = Rope(_RopeConfig(), dim, 256, dtype, torch.device("cpu"))
    shape = HeadShape(heads, kv_heads, dim)
    gen = torch.Generator().manual_seed(0)
    layout = HeadLayout(kv_heads, group, dtype, torch.device("cpu"))
    ctx = [0, 5, 11, 2]  # the first three decode one token, the last prefills 6
    blocks = torch.randperm(40, generator=gen).tolist()
    seqs, start = [], 0
    for c, n in zip(ctx, [1, 1, 1, 6]):
        need = -(-(c + n) // block)
        seqs.append(SeqLayout(blocks[start : start + need], c, n))
        start += need
    batch = build_batch(seqs, block, layout)
    prefix = [torch.randn(kv_heads, 40 * block, dim, generator=gen).to(dtype) for _ in range(2)]
    qkv = torch.randn(9, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    outs, caches = [], []
    for kernels in (TorchKernels(), NativeKernels(ops)):
        cache = tuple(c.clone() for c in prefix)
        outs.append(kernels.attend(qkv.clone(), shape, kernels.rope_step(rope, batch), batch, cache, dim**-0.5))
        caches.append(cache)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=tol, rtol=tol)
    for torch_cache, native_cache in zip(*caches):
        torch.testing.assert_close(native_cache.float(), torch_cache.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize(("k", "n"), [(576, 1728), (100, 37), (1536, 576)])
def test_linear_bf16_matches_f_linear(ops, k, n):
    """Batch-1 matrix-vector product with bias, residual or gelu; K = 100 exercises the masked tail."""
    if not hasattr(ops, "linear_bf16"):
        pytest.skip("built without AVX512-BF16")
    gen = torch.Generator().manual_seed(k)
    x, w = torch.randn(1, k, generator=gen).bfloat16(), (torch.randn(n, k, generator=gen) / k**0.5).bfloat16()
    bias, res = torch.randn(n, generator=gen).bfloat16(), torch.randn(1, n, generator=gen).bfloat16()
    ref = torch.nn.functional.linear(x.float(), w.float(), bias.float())
    cases = [
        (ops.linear_bf16(x, w, None, None, ""), ref - bias.float()),
        (ops.linear_bf16(x, w, bias, res, ""), ref + res.float()),
        (ops.linear_bf16(x, w, bias, None, "gelu_tanh"), torch.nn.functional.gelu(ref, approximate="tanh")),
        (ops.linear_bf16(x.expand(3, k).contiguous(), w, bias, None, "")[2:], ref),
    ]
    for got, want in cases:
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_rows_matches_torch_including_ties(ops, dtype):
    logits = torch.randn(5, 49152).to(dtype)
    logits[1, 300] = logits[1, 40000] = 1e4  # tie: the first index wins, as in torch
    logits[2] = float("-inf")
    logits[3, -1] = 1e4  # the maximum in the last, partial chunk
    assert ops.argmax_rows(logits).tolist() == logits.float().argmax(dim=-1).tolist()


def test_decode_attention_reads_blocks_in_place(ops):
    """Long contexts over scattered blocks, batch 8: the native op equals gather + matmul attention."""
    kv_heads, group, dim, block = 3, 3, 64, 16
    gen = torch.Generator().manual_seed(1)
    lens = [1, 17, 64, 100, 255, 256, 3, 130]
    perm = torch.randperm(200, generator=gen).tolist()
    seqs, start = [], 0
    for n in lens:
        need = -(-n // block)
        seqs.append(SeqLayout(perm[start : start + need], n - 1, 1))
        start += need
    batch = build_batch(seqs, block, HeadLayout(kv_heads, group, torch.float32, torch.device("cpu")))
    keys, values = (torch.randn(kv_heads, 200 * block, dim, generator=gen) for _ in range(2))
    q = torch.randn(len(lens), kv_heads * group, dim, generator=gen)
    ref = decode_attention(q, keys, values, batch.decode, 0.125)
    got = ops.paged_decode_attention(q, keys, values, batch.decode.tables, batch.decode.lens, block, 0.125)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_gpt2_with_native_kernels_matches_transformers(ops, gpt2_tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(gpt2_tiny_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (4, 21, 9)]
    expected = [hf_greedy(model, p, 24) for p in prompts]
    spec = FragmentSpec("g", str(gpt2_tiny_dir), dtype="float32")
    assert generate(load_fragment(spec, kernels="native"), prompts, 24, chunk=5) == expected
    first = load_fragment(FragmentSpec("g0", str(gpt2_tiny_dir), layer_end=2, has_head=False, dtype="float32"),
                          kernels="native")
    second = load_fragment(FragmentSpec("g1", str(gpt2_tiny_dir), layer_start=2, has_embedding=False, dtype="float32"))
    assert generate(Pipeline([first, second]), prompts, 24) == expected  # native and torch fragments mixed


@pytest.mark.slow
def test_smollm2_with_native_kernels_matches_transformers(ops, smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (6, 30, 13)]
    expected = [hf_greedy(model, p, 32) for p in prompts]
    spec = FragmentSpec("s", str(smollm2_dir), dtype="float32", kv_cache_bytes=64 << 20)
    frag = load_fragment(spec, kernels="native")
    assert generate(frag, prompts, 32) == expected


def test_kernel_choice_is_checked(gpt2_tiny_dir):
    with pytest.raises(InvalidRequest, match="kernels must be one of torch, native, auto, got 'fast'"):
        load_fragment(FragmentSpec("g", str(gpt2_tiny_dir)), kernels="fast")
    with pytest.raises(InvalidRequest, match="native kernels run on the CPU only"):
        native_ops(torch.device("cuda"))
