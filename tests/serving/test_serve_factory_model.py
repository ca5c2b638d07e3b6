"""A `py:` factory model (a small CNN) served through the stateless engine: genie-serve started in this process
(registry, a real worker process over gRPC, the dynamic batcher), called through the service the front doors
use; its outputs equal the factory's module run here."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import torch

from genie.config import parse_config
from genie.serving.app import start

pytestmark = pytest.mark.slow

FACTORIES = Path(__file__).resolve().parents[1] / "workers"


@pytest.fixture
def factory_path(monkeypatch):
    monkeypatch.syspath_prepend(str(FACTORIES))  # the registry imports the factory here ...
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FACTORIES), os.environ.get("PYTHONPATH", "")]))  # ... the worker there


def test_a_factory_cnn_is_served_by_the_stateless_engine_and_equals_the_module(tmp_path, factory_path) -> None:
    from stateless_models import small_cnn

    module, _ = small_cnn()
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want_logits, want_features = module(images)
    cfg = parse_config({
        "model": {"name": "cnn", "source": "py:stateless_models:small_cnn", "register_if_missing": True,
                  "dtype": "float32", "max_queue_delay_ms": 20},
        "registry": {"home": str(tmp_path / "home")},
        "workers": {"launch": 1, "threads": 1},
        "serving": {"http_port": 0, "grpc_port": None},
    })

    async def serve_and_call():
        async with AsyncExitStack() as stack:
            running = await start(cfg, stack)
            entry = running.catalog.named("cnn")
            assert entry.kind == "tensor" and [s.name for s in entry.inputs] == ["images"]
            service = entry.service
            outs = await asyncio.gather(*(service.run_tensors([{"images": images[i:i + 1]}]) for i in range(12)))
            return [o for (o,) in outs], service.largest_batch

    outs, largest = asyncio.run(serve_and_call())
    got_logits = torch.stack([o["output_0"] for o in outs])
    got_features = torch.stack([o["output_1"] for o in outs])
    assert largest > 1, "twelve concurrent requests should have shared a forward"
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_features, want_features, rtol=0, atol=1e-5)
