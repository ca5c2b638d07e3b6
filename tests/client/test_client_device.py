"""The `genie` device and genie.capture() against the worker's program host in-process (fake_transport.py):
eager parity, what materialises, one RunProgram per repeated materialisation, capture() nesting and threads,
fallback with a warning, autograd refused."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

import genie
import genie.client as gc
from fake_transport import HostTransport
from genie.client import lazy
from genie.client import session as session_module
from genie.client.device import device, is_genie


@pytest.fixture
def session(monkeypatch):
    s = gc.Session(HostTransport())
    monkeypatch.setattr(session_module, "_current", s)
    return s


def eager_program(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = torch.relu(x @ w + 0.5)
    p = torch.softmax(h, dim=-1)
    picked = p[idx]  # advanced indexing
    sliced = h[1:, ::2].transpose(0, 1)
    return p.sum(dim=0), p.mean(), h.amax(dim=1), picked, sliced.contiguous() * 2, torch.cat([h, p], dim=1)


def test_an_eager_program_on_the_genie_device_equals_eager_cpu(session) -> None:
    g = torch.Generator().manual_seed(0)
    x, w, idx = torch.randn(6, 8, generator=g), torch.randn(8, 5, generator=g), torch.tensor([4, 0, 2])
    dev = device()
    got = eager_program(x.to(dev), w.to(dev), idx.to(dev))
    assert all(is_genie(t) and t.device == dev for t in got) and session.transport.calls == []  # recorded only
    assert got[3].shape == (3, 5) and got[4].shape == (3, 5)  # metadata without running anything
    for have, want in zip(got, eager_program(x, w, idx)):
        torch.testing.assert_close(have.cpu(), want, rtol=0, atol=1e-5)


def test_cpu_item_tolist_print_and_bool_materialise(session, capsys) -> None:
    dev = device()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3).to(dev)
    y = (x * 2 - 1).relu()
    assert session.transport.calls == []
    assert y.sum().item() == 25.0
    assert y.tolist() == [[0.0, 1.0, 3.0], [5.0, 7.0, 9.0]]
    assert bool(y.max() > 8) is True
    print(y[1])
    assert capsys.readouterr().out.strip() == "tensor([5., 7., 9.], device='genie:0')"
    assert y.numpy().tolist() == y.tolist()
    # each new program here has no weights (x came from the client as an input): LoadProgram carries its run
    calls = session.transport.calls
    assert calls == ["LoadProgram"] * len(calls) and len(calls) >= 3


def test_the_same_eager_code_again_is_one_run_program_round_trip(session) -> None:
    dev = device()
    weight = torch.randn(16, 16)  # a CPU tensor the genie ops read: a weight, bound once by sha256

    def step(x: torch.Tensor) -> float:
        return torch.tanh(x.to(dev) @ weight).sum().item()

    x = torch.randn(4, 16)
    assert step(x) == pytest.approx(torch.tanh(x @ weight).sum().item(), abs=1e-5)
    first = list(session.transport.calls)
    assert first[0] == "LoadProgram" and first[-1] == "RunProgram"
    for _ in range(3):
        before = len(session.transport.calls)
        x = torch.randn(4, 16)
        assert step(x) == pytest.approx(torch.tanh(x @ weight).sum().item(), abs=1e-5)
        assert session.transport.calls[before:] == ["RunProgram"]
    (counters,) = session.stats().programs
    assert counters.runs == 4 and counters.rpcs == len(first) + 3
    assert counters.weight_bytes_in == weight.numel() * 4  # the weight travelled once
    assert counters.last_run_bytes_in < weight.numel() * 4  # a run moves only the input


def test_a_module_moved_to_the_genie_device_keeps_its_weights_on_the_worker(session) -> None:
    from client_models import SmallResNet, TwoBranch, seeded

    cnn = seeded(SmallResNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # a CPU module on genie inputs: its weights are read as resident weights
        torch.testing.assert_close(cnn(x.to(device())).cpu(), cnn(x), rtol=0, atol=1e-5)
    model = seeded(TwoBranch)
    moved = seeded(TwoBranch).to("genie")
    assert all(is_genie(p) for p in moved.parameters())
    calls = []
    for _ in range(3):
        x = torch.randn(5, 16)
        before = len(session.transport.calls)
        with torch.no_grad():
            torch.testing.assert_close(moved(x.to("genie")).cpu(), model(x), rtol=0, atol=1e-5)
        calls.append(session.transport.calls[before:])
    assert calls[1:] == [["RunProgram"], ["RunProgram"]]
    (counters,) = [c for c in session.stats().programs if c.runs == 3]
    assert counters.weight_bytes_in == sum(p.numel() * 4 for p in model.parameters())
    assert counters.last_run_bytes_in < 1000  # [5, 16] float32 and the request's names


def test_a_loop_that_reads_each_step_does_not_recompute_its_history(session) -> None:
    dev = device()
    x = torch.ones(3).to(dev)
    lazy_program_nodes()
    for step in range(1, 6):
        x = x * 2
        assert x.sum().item() == 3 * 2 ** step  # x is live: it is fetched with the sum, not recomputed next step
    assert lazy_program_nodes() == 5 * 2  # mul and sum, once each step


def lazy_program_nodes() -> int:
    from genie.client.lazy_program import Stats

    nodes, Stats.nodes = Stats.nodes, 0
    return nodes


def test_capture_makes_factories_genie_tensors_nested_and_per_thread(session) -> None:
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        seen["other"] = is_genie(torch.zeros(2))

    with genie.capture() as outer:
        torch.manual_seed(3)
        a = torch.randn(4, 4)
        with genie.capture() as inner:
            b = torch.ones(4) * 3
            assert inner.depth == outer.depth + 1
        c = torch.arange(4, dtype=torch.float32)  # the outer capture is still active
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        d = torch.tensor([1.0, 2.0, 3.0, 4.0])
        e = torch.zeros(2, device="cpu")  # an explicit device wins
    assert all(is_genie(t) for t in (a, b, c, d)) and not is_genie(e) and seen == {"other": False}
    assert not is_genie(torch.zeros(2))  # after the block
    torch.manual_seed(3)
    want = torch.randn(4, 4) + torch.ones(4) * 3 + torch.arange(4) + torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close((a + b + c + d).cpu(), want, rtol=0, atol=1e-6)  # RNG ran here, seeded as on the CPU


def test_an_op_off_the_allowlist_runs_here_with_a_warning_naming_it(session) -> None:
    dev = device()
    x = torch.linspace(0.1, 3, 12).reshape(3, 4)
    with pytest.warns(gc.GenieFallbackWarning, match=r"aten\.special_bessel_j0\.default"):
        y = torch.special.bessel_j0(x.to(dev) * 2)
    assert is_genie(y)
    torch.testing.assert_close((y + 1).cpu(), torch.special.bessel_j0(x * 2) + 1, rtol=0, atol=1e-6)


def test_a_data_dependent_op_runs_here_on_its_materialised_input(session) -> None:
    dev = device()
    x = torch.tensor([0.0, 3.0, 0.0, 5.0]).to(dev)
    with pytest.warns(gc.GenieFallbackWarning, match="nonzero"):
        nz = torch.nonzero(x * 1)
    assert nz.cpu().tolist() == [[1], [3]]


def test_a_program_the_worker_refuses_runs_here_with_a_warning(session, monkeypatch) -> None:
    from genie.client import lazy_ops

    monkeypatch.setattr(lazy_ops, "_ALLOWED", lazy_ops._ALLOWED)  # keep the client's allowlist as it is
    refuse = session.transport.host
    monkeypatch.setattr(type(refuse), "load", lambda self, request: (_ for _ in ()).throw(
        __import__("genie.errors", fromlist=["InvalidRequest"]).InvalidRequest("op 'aten.tanh.default' is not "
                                                                             "on this worker's allowlist")))
    x = torch.randn(5)
    with pytest.warns(gc.GenieFallbackWarning, match="refused it: op 'aten.tanh.default'"):
        got = torch.tanh(x.to(device())).cpu()
    torch.testing.assert_close(got, torch.tanh(x), rtol=0, atol=0)


def test_in_place_ops_are_recorded_and_writes_through_views_are_refused(session) -> None:
    dev = device()
    x = torch.randn(3, 4)
    y = x.to(dev) * 1
    y.add_(1).relu_()
    torch.testing.assert_close(y.cpu(), (x + 1).relu(), rtol=0, atol=1e-6)
    z = x.to(dev) * 1
    row = z[0]
    with pytest.raises(lazy.GenieUnsupported, match="out of place"):
        row.mul_(2)  # z is alive and would not see the write
    with pytest.raises(lazy.GenieUnsupported, match="out of place"):
        z.mul_(2)  # nor would row
    del row
    z.mul_(2)  # nothing else sees z's memory now
    torch.testing.assert_close(z.cpu(), x * 2, rtol=0, atol=0)


def test_backward_through_a_genie_tensor_says_autograd_is_out_of_scope(session) -> None:
    w = torch.randn(4, 2, requires_grad=True)
    loss = (torch.randn(3, 4).to(device()) @ w).sum()
    with pytest.raises(gc.AutogradOutOfScope, match="out of scope"):
        loss.backward()
    with pytest.raises(gc.AutogradOutOfScope, match="out of scope"):
        loss.cpu().backward()
    with pytest.raises(gc.AutogradOutOfScope, match="out of scope"):
        torch.autograd.grad(loss, w)  # refused before the engine starts a thread for the genie device
    (w * 2).sum().backward()  # CPU autograd is untouched
    assert w.grad.eq(2).all()


def test_genie_exports_capture_and_device_without_importing_torch_first() -> None:
    code = ("import sys, genie; assert 'torch' not in sys.modules; import torch\n"
            "with genie.capture(): x = torch.zeros(2)\n"
            "print(x.device, genie.device())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "genie:0 genie:0", done.stderr[-800:]
