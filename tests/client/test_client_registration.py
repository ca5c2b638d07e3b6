"""genie.remote registers its model on first use (client/registration.py): analysed once, in a real SQLite
registry; a second process with the same weights finds the version and reads its profile without analysing
again; the profile, not the HF config, decides which outputs stay on the worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genie
import genie.client as gc
from client_models import TwoBranch, seeded, tiny_gpt2
from genie.client.remote import RegistrationWarning
from genie.registry.store import Registry

SECOND_PROCESS = """
import json, sys, torch
import genie, genie.client as gc
from client_models import tiny_gpt2
from fake_transport import HostTransport
fast = genie.remote(tiny_gpt2(), gc.Session(HostTransport()))
with torch.no_grad():
    fast(torch.randint(0, 128, (3, 20)), use_cache=False)  # another batch size and length than the first
print(json.dumps({"ref": fast.registered.ref, "workload": fast.registered.profile.workload_type}))
"""


def counts(ref: str) -> dict[str, int]:
    with Registry.open() as reg:
        name, version = ref.split(":")
        return reg.analysis_counts(reg.resolve(name, int(version)))


@pytest.mark.slow
def test_the_first_call_registers_and_a_second_process_finds_it_without_analysing(host_session,
                                                                                    registry_home) -> None:
    model = tiny_gpt2()
    fast = genie.remote(model)
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, use_cache=False)[0], model(ids, use_cache=False)[0], rtol=0, atol=1e-5)
    registered = fast.registered
    assert registered.ref == "remote-gpt2lmheadmodel:1" and registered.profile.workload_type == "llm"
    assert counts(registered.ref) == {"profile": 1, "plan": 0}
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SECOND_PROCESS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ref": registered.ref, "workload": "llm"}
    assert counts(registered.ref) == {"profile": 1, "plan": 0}, "found registered, not analysed again"


@pytest.mark.slow
def test_the_kv_shape_comes_from_the_profile_not_the_hf_config(host_session) -> None:
    model = tiny_gpt2()
    model.config.n_head = 4  # a config that lies about the heads: the modules were built with 2
    ids = torch.randint(0, 128, (1, 6))
    kwargs = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
        gc.reset()
        torch.testing.assert_close(genie.remote(model, register=False).generate(ids, **kwargs), want)
        assert gc.report()["kept_outputs"] == 0  # the config's KV shape matches no output
        gc.reset()
        fast = genie.remote(model)
        torch.testing.assert_close(fast.generate(ids, **kwargs), want)
    shape = fast.registered.profile.llm
    assert (shape.num_kv_heads, shape.head_dim) == (2, 16)
    assert gc.report()["kept_outputs"] > 0  # the profile's shape finds the KV outputs


class Empty(torch.nn.Module):
    """No tensor op in forward: nothing for the analyser to profile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_model_the_analyser_refuses_runs_with_a_warning(host_session) -> None:
    x = torch.randn(2, 3)
    with pytest.warns(RegistrationWarning, match="could not register 'remote-empty'.*nothing to analyse"):
        out = genie.remote(Empty())(x)
    assert torch.equal(out, x)
    branches = seeded(TwoBranch)
    with torch.no_grad():
        y = torch.randn(3, 16)
        fast = genie.remote(branches, name="two-branch")
        torch.testing.assert_close(fast(y), branches(y), rtol=0, atol=1e-5)
    assert fast.registered.ref == "two-branch:1"


def test_a_registry_it_cannot_open_leaves_the_model_running(host_session, tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GENIE_HOME", str(tmp_path / "file" / "home"))
    branches = seeded(TwoBranch)
    y = torch.randn(2, 16)
    with torch.no_grad(), pytest.warns(RegistrationWarning, match="could not register 'remote-twobranch'.*Error"):
        fast = genie.remote(branches)
        torch.testing.assert_close(fast(y), branches(y), rtol=0, atol=1e-5)
    assert fast.registered is None
