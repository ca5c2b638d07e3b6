"""Fixtures of the client-API tests: one real genie-serve for all of them, started with tests/serving's helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

API_KEY = "client-test-key"


def _serving_helpers():
    """tests/serving/conftest.py as a module of its own name (both folders have a conftest.py)."""
    path = Path(__file__).resolve().parents[1] / "serving" / "conftest.py"
    spec = importlib.util.spec_from_file_location("serving_test_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def registry_home(tmp_path_factory):
    """genie.remote registers its models on first use: in a registry of each module's own, never ~/.genie."""
    home = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENIE_HOME", str(home))
        patch.delenv("GENIE_REGISTRY_URL", raising=False)
        yield home


@pytest.fixture(scope="session")
def api_key() -> str:
    """The one API key the client tests' genie-serve accepts."""
    return API_KEY


@pytest.fixture
def host_session(monkeypatch):
    """A session whose transport runs the worker's program host in this process (fake_transport.py), made
    current for genie.remote and the backend; Dynamo's caches and the client's programs start empty."""
    import torch

    import genie.client as gc
    from fake_transport import HostTransport
    from genie.client import session as session_module

    torch._dynamo.reset()
    gc.reset()
    s = gc.Session(HostTransport())
    monkeypatch.setattr(session_module, "_current", s)
    return s


@pytest.fixture(scope="package")
def served_session(genie_serve, api_key):
    """A session connected to the module's genie-serve by its URL and API key, as a user connects."""
    import genie

    s = genie.connect(genie_serve.url, api_key=api_key)
    yield s
    s.close()


@pytest.fixture(scope="package")
def genie_serve(tmp_path_factory):
    """genie-serve on configs/vision.yaml (the demo ResNet keeps its two CPU workers busy with nothing else),
    with one API key and a small op-output limit for programs (workers.programs); programs are placed on its
    workers. One for every module of tests/client (each start costs about a minute here), stopped cleanly at
    the end."""
    from client_models import SERVED_MAX_OUTPUT_ELEMENTS

    helpers = _serving_helpers()
    config = helpers.shipped_config("vision.yaml")
    config["serving"] |= {"grpc_port": None, "client_programs": True}
    # a small limit from the YAML, passed to the launched workers: the served tests' models stay under it
    config["workers"]["programs"] = {"max_output_elements": SERVED_MAX_OUTPUT_ELEMENTS}
    server = helpers.start_server(config, tmp_path_factory.mktemp("serve"), env={"GENIE_API_KEYS": API_KEY})
    yield server
    assert server.stop(grace=30) == 0, server.log_tail()
