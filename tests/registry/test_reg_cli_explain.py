"""`genie-models plan NAME --config F --explain`: reasons and predicted costs per decision, measured costs from a
genie-serve's GET /v1/genie/plans when one answers, one-line errors for bad input."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from genie.registry.cli import main

FACTORY = "py:genie.serving.demo_models:tiny_recommender"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def rec_config(capsys, genie_env, tmp_path: Path) -> Path:
    code, _, err = run(capsys, "register", "rec", FACTORY, "-q")
    assert code == 0, err
    config = tmp_path / "rec.yaml"
    config.write_text("model: {name: rec, strategy: recsys_split}\nworkers: {launch: 2, device: cpu}\n"
                      "serving: {http_port: 0}\n")
    return config


class _Plans(BaseHTTPRequestHandler):
    body: bytes = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path != "/v1/genie/plans" or self.headers.get("Authorization") != "Bearer k1":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def test_explain_gives_each_decision_its_reason_and_predicted_cost(capsys, rec_config: Path) -> None:
    code, out, err = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["plan"]["strategy"] == "recsys_split"  # the pinned strategy, as genie-serve would run it
    decisions = data["explain"]["decisions"]
    frags = [d for d in decisions if d["decision"].startswith(("sparse", "dense"))]
    assert len(frags) == len(data["plan"]["fragments"]) >= 2
    assert all(d["reason"] and d["predicted"]["step_s"] > 0 and d["measured"] is None for d in frags)
    (link,) = [d for d in decisions if d["decision"].startswith("link")]
    assert link["predicted"]["bytes_per_request"] == data["plan"]["transfers"][0]["bytes_per_request"] > 0
    assert data["explain"]["measured_by"] == "no genie-serve URL to ask"
    code, out, _ = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain")
    assert code == 0 and "predictions only" in out and "predicted: step" in out


def test_explain_sets_what_a_genie_serve_measured_beside_the_prediction(capsys, rec_config: Path) -> None:
    code, out, _ = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", "--json")
    plan = json.loads(out)["plan"]
    frag, link = plan["fragments"][0], plan["transfers"][0]
    report = {"model": "rec", "fragments": [{
        "fragment_id": frag["fragment_id"], "predicted": {"step_s_calibrated": 4e-4},
        "measured": {"step_s_at_planned_batch": 5e-4, "most_common_batch": 8, "step_s_at_most_common_batch": 5e-4,
                     "rows": 80}}],
        "links": [{"src": link["src"], "dst": link["dst"], "measured_worker_bytes_per_request": 271.5,
                   "measured_payload_bytes_per_request": 256.0}]}
    _Plans.body = json.dumps({"object": "list", "data": [report]}).encode()
    server = HTTPServer(("127.0.0.1", 0), _Plans)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        code, out, err = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", "--url", url,
                             "--api-key", "k1", "--json")
        assert code == 0, err
        explained = json.loads(out)["explain"]
        assert explained["measured_by"] == f"measured by the genie-serve at {url}"
        got = {d["decision"]: d["measured"] for d in explained["decisions"]}
        assert got[f"{frag['fragment_id']} on {frag['worker']}"]["step_s"] == 5e-4
        assert got[f"link {link['src']} -> {link['dst']}"]["bytes_per_request"] == 271.5
        code, out, _ = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", "--url", url,
                           "--api-key", "wrong")
        assert code == 0 and "answered HTTP 401" in out and "--api-key" in out
    finally:
        server.shutdown()


@pytest.mark.parametrize(("extra", "message"), [
    (["--url", "ftp://127.0.0.1:1"], "--url must start with http:// or https://"),
])
def test_bad_explain_input_is_one_line_and_non_zero(capsys, rec_config: Path, extra, message) -> None:
    code, out, err = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", *extra)
    assert code == 1 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_genie_serve_leaves_the_predictions(capsys, rec_config: Path) -> None:
    code, out, _ = run(capsys, "plan", "rec", "--config", str(rec_config), "--explain", "--url", "http://127.0.0.1:9")
    assert code == 0 and "no genie-serve answered at http://127.0.0.1:9" in out


def test_a_pinned_strategy_that_cannot_apply_is_refused_in_one_line(capsys, rec_config: Path, tmp_path) -> None:
    config = tmp_path / "branches.yaml"
    config.write_text("model: {name: rec, strategy: branch_parallel}\nworkers: {launch: 2, device: cpu}\n"
                      "serving: {http_port: 0}\n")
    code, out, err = run(capsys, "plan", "rec", "--config", str(config), "--explain")
    assert code == 1 and out == "" and err.startswith("genie-models: error: model 'rec':")
    assert "strategy: auto lets the planner choose" in err and len(err.strip().splitlines()) == 1


def test_an_llm_plan_explains_prefill_and_decode(capsys, genie_env, llama_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "llm.yaml"
    config.write_text("model: {name: tiny}\nworkers: {launch: 2, device: cpu, memory_mib: 2048}\n"
                      "serving: {http_port: 0}\n")
    assert run(capsys, "register", "tiny", str(llama_dir), "-q")[0] == 0
    code, out, err = run(capsys, "plan", "tiny", "--config", str(config), "--explain", "--json")
    assert code == 0, err
    frags = [d for d in json.loads(out)["explain"]["decisions"] if " on worker-" in d["decision"]]
    assert frags and all(d["predicted"]["prefill_s"] > d["predicted"]["decode_step_s_batch_1"] > 0 for d in frags)
    code, out, _ = run(capsys, "plan", "tiny", "--config", str(config), "--explain")
    assert code == 0 and "predicted: prefill" in out and "decode step" in out
