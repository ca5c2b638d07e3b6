"""The native kernels split their work among threads (matmul: whole panels of column blocks; attention: runs of
(sequence, KV head) of about equal keys), never a sum: a row's bits are the same on one thread as on two."""

from __future__ import annotations

import pytest
import torch

from genie.workers.engine.linear import InvariantLinear, invariant_op


def on_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k, n", [(576, 960), (1536, 576), (576, 3072), (64, 40)])
def test_a_matmul_gives_the_same_bits_on_one_thread_and_on_two(ops, dtype, k, n) -> None:
    op = invariant_op(ops, dtype)
    if op is None:
        pytest.skip(f"no batch-invariant matmul for {dtype} on this CPU")
    g = torch.Generator().manual_seed(n)
    lin = InvariantLinear((torch.randn(n, k, generator=g) * 0.05).to(dtype), None, op)
    for rows in (1, 7, 32, 45):
        x = torch.randn(rows, k, generator=g).to(dtype)
        residual = torch.randn(rows, n, generator=g).to(dtype)
        one = on_threads(1, lambda: lin.add(x, residual))
        two = on_threads(2, lambda: lin.add(x, residual))
        assert torch.equal(one, two), rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_gives_the_same_bits_on_one_thread_and_on_two(ops, dtype) -> None:
    g = torch.Generator().manual_seed(0)
    kv_heads, group, dim, block, blocks = 3, 3, 64, 16, 160
    keys = torch.randn(kv_heads, blocks * block, dim, generator=g).to(dtype)
    values = torch.randn(kv_heads, blocks * block, dim, generator=g).to(dtype)
    lens = torch.tensor([3, 200, 17, 150, 16, 90, 1, 199] * 4)  # mixed contexts: the split balances their keys
    tables = torch.stack([torch.randperm(blocks, generator=g)[:13] for _ in lens])
    q = torch.randn(len(lens), kv_heads * group, dim, generator=g).to(dtype)

    def attend():
        return ops.paged_decode_attention(q, keys, values, tables, lens, block, dim**-0.5)

    assert torch.equal(on_threads(1, attend), on_threads(2, attend))
