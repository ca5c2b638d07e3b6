"""The client API end to end: genie.connect to a real genie-serve (CLI subprocess, two CPU workers over real
gRPC), torch.compile(backend="genie") and genie.remote equal to local eager, bytes from the workers' own
counters, refusals over the relay, fallback, API keys."""

from __future__ import annotations

import pickle
import urllib.request

import pytest
import torch

import genie
import genie.client as gc
from client_models import SERVED_MAX_OUTPUT_ELEMENTS, Bessel, SmallResNet, TwoBranch, seeded, tiny_bert, tiny_gpt2
from test_client_programs import lowered_of
from genie.protos import worker_pb2 as pb
from genie.workers.programs import program_id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def session(served_session):
    return served_session


def run_counters(session, program: str) -> pb.ProgramCounters:
    (counters,) = session.stats(program).programs
    return counters


def test_models_run_on_genie_workers_equal_to_local_eager(session) -> None:
    torch._dynamo.reset()
    gc.reset()
    cnn = seeded(SmallResNet)
    compiled = torch.compile(cnn, backend="genie")
    gpt2, bert, branches = tiny_gpt2(), tiny_bert(), seeded(TwoBranch)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    cases = [
        (compiled, cnn, (torch.randn(1, 3, 32, 32),), {}),
        (compiled, cnn, (torch.randn(8, 3, 32, 32),), {}),
        (genie.remote(gpt2), gpt2, (ids,), {"use_cache": False}),
        (genie.remote(bert), bert, (ids,), {"attention_mask": torch.ones_like(ids)}),
        (genie.remote(branches), branches, (torch.randn(5, 16),), {}),
    ]
    with torch.no_grad():
        for fast, model, args, kwargs in cases:
            for _ in range(2):  # the first call places the program and binds the weights; the second only runs
                got, want = fast(*args, **kwargs), model(*args, **kwargs)
                got = got if isinstance(got, torch.Tensor) else got[0]
                want = want if isinstance(want, torch.Tensor) else want[0]
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    report = gc.report()
    assert report["remote_calls"] == 10 and report["local_calls"] == 0 and report["graph_breaks"] == 0


def test_after_the_first_call_a_forward_moves_only_its_inputs_and_outputs(session) -> None:
    torch._dynamo.reset()
    model = seeded(SmallResNet)
    with torch.no_grad():
        for p in model.parameters():  # weights no earlier test sent, so they must travel once here
            p.mul_(1.01)
    fast = genie.remote(model)
    x = torch.randn(4, 3, 32, 32)  # a batch size no other test uses: a program of its own
    with torch.no_grad():
        fast(x)
        rpcs = session.transport.rpcs
        out = fast(x)
    assert session.transport.rpcs == rpcs + 1
    (counters,) = [c for c in session.stats().programs if c.runs and c.last_run_bytes_in > x.numel() * 4
                   and c.last_run_bytes_in < x.numel() * 4 + 400]
    assert counters.runs == 2
    tensors = x.numel() * 4 + out.numel() * 4
    # a run names its program and weights (two sha256s) and each tensor's dtype and shape: under 400 bytes more
    assert tensors < counters.last_run_bytes_in + counters.last_run_bytes_out < tensors + 400
    params = sum(p.numel() * 4 for p in model.parameters())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    # once; tensors the worker holds already (the zero BatchNorm biases, equal to the first test's) stay there
    assert 0.9 * params < counters.weight_bytes_in <= state


def test_gpt2_generate_keeps_its_kv_on_the_worker_and_gives_eager_tokens(session) -> None:
    torch._dynamo.reset()
    gc.reset()
    model = tiny_gpt2()
    fast = genie.remote(model)
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(2))
    kwargs = {"max_new_tokens": 32, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
        torch.testing.assert_close(fast.generate(ids, **kwargs), want, rtol=0, atol=0)
        fast.generate(ids, **kwargs)  # Dynamo tries its dynamic decode graph first now: one more program
        served = sum(c.bytes_in + c.bytes_out for c in session.stats().programs)  # the workers' own counters
        rpcs = session.transport.rpcs
        torch.testing.assert_close(fast.generate(ids, **kwargs), want, rtol=0, atol=0)
    assert session.transport.rpcs - rpcs == 32  # one RunProgram per new token
    per_step = (sum(c.bytes_in + c.bytes_out for c in session.stats().programs) - served) / 32
    kv = 2 * model.config.n_layer * ids.shape[1] * model.config.n_embd * 4  # the prompt's KV alone, float32
    assert per_step < 2000 < kv, per_step  # ids, positions, last logits and handles; never the cache
    assert gc.report()["kept_outputs"] == 3 * 32 * 4 and session.stats().resident_tensors > 0


def post(url: str, rpc: str, message, key: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-protobuf"} | ({"Authorization": f"Bearer {key}"} if key else {})
    req = urllib.request.Request(f"{url}/v1/genie/programs/{rpc}", data=message.SerializeToString(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_unsafe_programs_are_refused_and_the_workers_keep_serving(genie_serve, session, api_key) -> None:
    payload = pickle.dumps(["os.system", "true"])
    status, body = post(genie_serve.url, "LoadProgram", pb.LoadProgramRequest(program_id=program_id(payload),
                                                                             program=payload), api_key)
    assert status == 400 and b"workers never unpickle" in body
    status, body = post(genie_serve.url, "LoadProgram", pb.LoadProgramRequest(), key=None)
    assert status == 401
    torch._dynamo.reset()
    model = seeded(Bessel)
    x = torch.randn(3, 4)
    with torch.no_grad(), pytest.warns(gc.GenieFallbackWarning, match="'aten.special_bessel_j0.default'.*allowlist"):
        out = genie.remote(model)(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
        branches = seeded(TwoBranch)
        y = torch.randn(2, 16)
        torch.testing.assert_close(genie.remote(branches)(y), branches(y), rtol=0, atol=1e-5)


class Tiled(torch.nn.Module):
    """One op whose output is twice the served fixture's workers.programs.max_output_elements."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(2048, 1) * 2


def test_the_configs_program_limits_reach_the_launched_workers(genie_serve, session, api_key) -> None:
    x = torch.randn(1, SERVED_MAX_OUTPUT_ELEMENTS // 1024)
    lowered, _ = lowered_of(Tiled(), x)
    request = pb.LoadProgramRequest(program_id=lowered.program_id, program=lowered.program)
    status, body = post(genie_serve.url, "LoadProgram", request, api_key)
    assert status == 429, body
    assert f"makes a tensor of {2 * SERVED_MAX_OUTPUT_ELEMENTS} elements; this worker allows at most " \
           f"{SERVED_MAX_OUTPUT_ELEMENTS} per op output".encode() in body
    assert not [c for c in session.stats().programs if c.program_id == lowered.program_id]
    torch._dynamo.reset()
    with torch.no_grad(), pytest.warns(gc.GenieFallbackWarning, match=f"at most {SERVED_MAX_OUTPUT_ELEMENTS}"):
        out = genie.remote(Tiled())(x)
    torch.testing.assert_close(out, x.repeat(2048, 1) * 2, rtol=0, atol=0)
