"""GET /v1/genie/plans for an LLM: per fragment the predicted prefill and decode step times (nominal and
calibrated on the workers' probes), beside the router's measured time per token and first token."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import HOME, smollm2_config
from served import get_json, post_json

from genie.registry.cli import main as genie_models

pytestmark = pytest.mark.slow


def test_an_llm_plan_shows_prefill_and_decode_predictions_beside_measurements(serve_smollm2, tmp_path, capsys,
                                                                            monkeypatch) -> None:
    server = serve_smollm2()
    status, body = post_json(f"{server.url}/v1/completions",
                             {"model": "smollm2", "prompt": "The river runs", "max_tokens": 6, "temperature": 0})
    assert status == 200, body
    status, plans = get_json(f"{server.url}/v1/genie/plans")
    assert status == 200
    (report,) = [p for p in plans["data"] if p["model"] == "smollm2"]
    assert "error" not in report and report["fragments"]
    for frag in report["fragments"]:
        p = frag["predicted"]
        assert p["prefill_s_calibrated"] > 0
        assert p["decode_step_s_calibrated"] >= p["decode_step_s_batch_1_calibrated"] > 0
        assert p["prefill_s"] > 0 and "not kept yet" in frag["measured"]["measured_step_s_per_fragment"]
    assert sum(f["measured"]["worker_steps"] for f in report["fragments"]) >= 6  # a prefill and the decode steps
    m = report["measured"]
    assert report["measured_mean_prompt_tokens"] >= 1
    assert any(f["predicted"].get("prefill_s_at_mean_prompt_calibrated", 0) > 0 for f in report["fragments"])
    assert m["tpot_s_samples"] >= 1 and m["mean_tpot_s"] > 0 and m["ttft_s_samples"] == 1 and m["mean_ttft_s"] > 0

    # genie-models plan --explain, against this server: the router's measurements beside each prediction
    config = tmp_path / "genie.yaml"
    config.write_text(yaml.safe_dump(smollm2_config()))
    monkeypatch.setenv("GENIE_HOME", str(HOME))
    capsys.readouterr()
    assert genie_models(["plan", "smollm2", "--config", str(config), "--explain", "--url", server.url, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)["explain"]
    assert explained["measured_by"] == f"measured by the genie-serve at {server.url}"
    frags = [d for d in explained["decisions"] if d["measured"] is not None]
    assert frags and frags[0]["measured"]["mean_tpot_s"] == pytest.approx(m["mean_tpot_s"])
