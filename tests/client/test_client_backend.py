"""The "genie" backend and genie.remote against the worker's program host in-process (fake_transport.py):
parity, one round trip per call, shape specialisation counted, fallback with a warning, autograd refused."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import genie
import genie.client as gc
from client_models import Bessel, SmallResNet, TwoBranch, seeded


@pytest.fixture
def session(host_session):
    return host_session


def test_importing_genie_does_not_import_torch() -> None:
    code = "import sys, genie; assert 'torch' not in sys.modules; genie.__version__; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr[-500:]


def test_the_backend_name_is_an_installed_entry_point() -> None:
    from importlib.metadata import entry_points

    (found,) = entry_points(group="torch_dynamo_backends", name="genie")
    assert found.load() is gc.genie_backend  # so backend="genie" works before genie.client is imported


def test_the_string_backend_runs_the_graph_on_the_host_equal_to_eager(session) -> None:
    model = seeded(TwoBranch)
    compiled = torch.compile(model, backend="genie")
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=1e-5)
    assert gc.report()["remote_calls"] == 1 and session.transport.calls[-1] == "RunProgram"


def test_after_the_first_call_a_forward_is_one_rpc_moving_only_inputs_and_outputs(session) -> None:
    model = seeded(SmallResNet)
    fast = genie.remote(model, session=session)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        fast(x)
        before = len(session.transport.calls)
        out = fast(x)
    assert session.transport.calls[before:] == ["RunProgram"]
    (counters,) = session.stats().programs
    assert counters.runs == 2 and counters.weight_bytes_in > 0
    tensor_bytes = x.numel() * 4 + out.numel() * 4
    # the request also names the program and binding (two sha256s, 130 bytes) and each tensor's dtype and shape
    assert tensor_bytes < counters.last_run_bytes_in + counters.last_run_bytes_out < tensor_bytes + 400


def test_new_batch_sizes_lower_new_programs_and_are_counted(session) -> None:
    model = seeded(TwoBranch)
    fast = genie.remote(model, session=session)
    with torch.no_grad():
        for batch in (1, 2, 3, 4, 5, 2):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-5)
    report = gc.report()
    assert report["programs"] == 5 and report["remote_calls"] == 6 and report["graph_breaks"] == 0
    assert report["respecializations"] == report["programs"] - report["graphs"]
    # batch marked dynamic up front: batch 1 is specialised by Dynamo, batches 2..5 share one graph
    assert report["graphs"] == 2 and report["recompiles"] == 1


class Broken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        torch._dynamo.graph_break()
        return self.b(y).relu()


def test_graph_breaks_are_counted_and_each_piece_runs_remotely(session) -> None:
    from torch._dynamo.utils import counters

    counters.clear()
    model = seeded(Broken)
    fast = genie.remote(model, session=session)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-6)
    report = gc.report()
    assert report["graph_breaks"] == 1 and report["graphs"] == 2 and report["remote_calls"] == 2


def test_an_op_the_worker_refuses_runs_locally_with_a_warning_naming_it(session) -> None:
    model = seeded(Bessel)
    fast = genie.remote(model, session=session)
    x = torch.randn(3, 4)
    with torch.no_grad(), pytest.warns(gc.GenieFallbackWarning, match="aten.special_bessel_j0.default"):
        out = fast(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
        fast(x)
    assert gc.report()["local_calls"] == 2 and gc.report()["fallbacks"] == 1


def test_backward_through_a_remote_graph_says_autograd_is_out_of_scope(session) -> None:
    model = seeded(TwoBranch)
    fast = genie.remote(model, session=session)
    out = fast(torch.randn(2, 16))
    with pytest.raises(gc.AutogradOutOfScope, match="autograd through remote graphs is out of scope"):
        out.sum().backward()


def test_a_weight_changed_in_place_is_bound_again(session) -> None:
    model = seeded(TwoBranch)
    fast = genie.remote(model, session=session)
    x = torch.randn(2, 16)
    with torch.no_grad():
        fast(x)
        model.gate.weight.mul_(2.0)
        torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-5)
    assert session.transport.calls.count("BindWeights") >= 2


def test_without_a_url_connect_says_how_to_name_one(monkeypatch) -> None:
    monkeypatch.delenv("GENIE_URL", raising=False)
    with pytest.raises(gc.errors.NotConnected, match="genie.connect"):
        genie.connect()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert genie.remote is gc.remote


class SameBytes(torch.nn.Module):
    """An int64 buffer and a float32 parameter whose bytes are equal (zeros, 16 bytes each)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("idx", torch.zeros(2, dtype=torch.int64))
        self.bias = torch.nn.Parameter(torch.zeros(4))
        self.table = torch.nn.Embedding(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias + self.table(self.idx).sum(0)


def test_weights_with_equal_bytes_but_other_dtypes_stay_apart(session) -> None:
    torch.manual_seed(0)
    model = SameBytes().eval()
    fast = genie.remote(model, session=session)
    with torch.no_grad():
        for batch in (2, 3):  # the second program binds by digest only, from the weights the first brought
            x = torch.randn(batch, 4)
            torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-6)
