"""The `genie` device end to end: genie.connect to a real genie-serve (CLI subprocess, CPU workers over real
gRPC), eager code under genie.capture() equal to eager CPU, one RunProgram per repeated materialisation by the
worker's own counters, and an op off the allowlist run here with a warning."""

from __future__ import annotations

import pytest
import torch

import genie
import genie.client as gc
from genie.client.device import is_genie

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def session(served_session):
    return served_session


def block(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ w + 0.1)
    return torch.softmax(h, dim=-1)[:, :4].sum(dim=0) - h.mean()


def test_captured_eager_code_runs_on_a_worker_equal_to_eager_with_one_rpc_per_repeat(session) -> None:
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    t = session.transport
    runs_before = {c.program_id: c.runs for c in session.stats().programs}  # the session is shared
    results = []
    for step in range(3):
        with genie.capture():
            torch.manual_seed(step)
            x = torch.randn(8, 32)
            out = block(x, w)
        assert is_genie(out)
        before = t.rpcs
        got = out.cpu()
        results.append(t.rpcs - before)
        torch.manual_seed(step)
        torch.testing.assert_close(got, block(torch.randn(8, 32), w), rtol=0, atol=1e-5)
    assert results[0] >= 3 and results[1:] == [1, 1]  # placed and bound once; then one RunProgram each
    programs = [c for c in session.stats().programs if c.runs - runs_before.get(c.program_id, 0) == 3]
    assert len(programs) == 1 and programs[0].weight_bytes_in == w.numel() * 4  # w travelled once
    assert programs[0].last_run_bytes_in < w.numel() * 4


def test_an_op_off_the_allowlist_runs_here_and_the_rest_on_the_worker(session) -> None:
    x = torch.linspace(0.1, 2.0, 16)
    with pytest.warns(gc.GenieFallbackWarning, match=r"aten\.special_bessel_j0\.default"):
        y = torch.special.bessel_j0(x.to("genie") * 3)
    before = session.transport.rpcs
    torch.testing.assert_close((y.exp() + 1).cpu(), torch.special.bessel_j0(x * 3).exp() + 1, rtol=0, atol=1e-5)
    assert session.transport.rpcs > before  # exp and add ran on the worker
