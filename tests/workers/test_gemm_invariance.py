"""The batch-invariant matmul (native_gemm.cpp): right within rounding, and a row's result is the same bits
whatever the number of rows, its position among them, the bias, residual and activation epilogue included."""

from __future__ import annotations

import pytest
import torch

from genie.workers.engine.linear import InvariantLinear, invariant_op, pack_weight


DTYPES = [(torch.float32, 2e-5), (torch.bfloat16, 4e-2)]
SHAPES = [(576, 960), (1536, 576), (64, 40), (34, 17)]  # K, N: SmolLM2's, and N not a multiple of 16


def linear(ops, dtype, k, n, bias=True):
    op = invariant_op(ops, dtype)
    if op is None:
        pytest.skip(f"no batch-invariant matmul for {dtype} on this CPU")
    g = torch.Generator().manual_seed(k * n)
    weight = (torch.randn(n, k, generator=g) * 0.05).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return InvariantLinear(weight, b, op), weight, b


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("k, n", SHAPES)
def test_matches_a_float64_reference(ops, dtype, tol, k, n) -> None:
    lin, weight, bias = linear(ops, dtype, k, n)
    x = torch.randn(37, k).to(dtype)
    residual = torch.randn(37, n).to(dtype)
    want = x.double() @ weight.double().T + bias.double()
    assert (lin(x).double() - want).abs().max() <= tol * max(1.0, want.abs().max())
    got = lin.add(x, residual).double()
    assert (got - (want + residual.double())).abs().max() <= tol * max(1.0, want.abs().max())
    gelu = torch.nn.functional.gelu(want, approximate="tanh")
    assert (lin.act(x, "gelu_tanh").double() - gelu).abs().max() <= tol * max(1.0, gelu.abs().max())


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("k, n", SHAPES)
def test_a_rows_bits_do_not_depend_on_the_rows_around_it(ops, dtype, tol, k, n) -> None:
    lin, _, _ = linear(ops, dtype, k, n)
    x = torch.randn(70, k).to(dtype)
    residual = torch.randn(70, n).to(dtype)
    row = x[9:10]
    alone = (lin(row), lin.add(row, residual[9:10]), lin.act(row, "gelu_tanh"))
    for rows in (10, 11, 13, 16, 33, 70):  # row 9 in every position of a register tile, and in big batches
        together = (lin(x[:rows]), lin.add(x[:rows], residual[:rows]), lin.act(x[:rows], "gelu_tanh"))
        for one, many in zip(alone, together):
            assert torch.equal(one[0], many[9]), rows
    shuffled = torch.cat([x[20:30], row, x[:5]])  # another position, other neighbours
    assert torch.equal(lin(shuffled)[10], alone[0][0])


def test_packing_puts_16_columns_across_the_lanes() -> None:
    w = torch.arange(18 * 4, dtype=torch.float32).view(18, 4)
    packed = pack_weight(w)
    assert packed.shape == (2, 4, 16)
    assert packed[0, 2, 5] == w[5, 2] and packed[1, 3, 1] == w[17, 3] and not packed[1, :, 2:].any()
    pairs = pack_weight(w.bfloat16())
    assert pairs.shape == (2, 2, 16, 2) and pairs[0, 1, 5, 1] == w[5, 3]


def test_the_layer_holds_the_weight_once_and_knows_what_it_shares(ops) -> None:
    lin, weight, _ = linear(ops, torch.float32, 64, 40, bias=False)
    assert lin.weight_bytes == 48 * 64 * 4  # the packed copy only, padded to 3 blocks of 16
    assert lin.shares(weight) and not lin.shares(weight.clone())
