"""Must-show 4 through the real server: per plan fragment, the step time genie-serve predicts (calibrated on its
workers' start-up probes) beside the step time its workers measured, as GET /v1/genie/plans reports them.

    python benchmarks/served_calibration.py [--models clip,recsys,sharded,vit,vision,encoder] [--requests 40]
                                            [--json FILE]

Each model is one genie-serve subprocess (one thread per worker, a fresh registry, free ports): the demo CLIP
branch-parallel, the demo recommender as a recsys split, the big-table recommender with its big table sharded by
rows over both workers (configs/recsys-sharded.yaml), the demo ViT pipelined in two stages
(configs/vision-pipeline.yaml: the router cuts each batch into micro-batches), the demo ResNet and the MiniLM
encoder whole. One client
sends `--requests` requests of 8 examples each, so each forward is a batch of 8; then the script reads the plan
report. The prediction compared is `predicted_step_s_calibrated_at_that_batch`, the measurement
`fastest_step_s_at_most_common_batch` (the fastest recent compute_seconds at that batch: the probes the
prediction rests on keep their fastest run too); the median is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import yaml

from genie.benchmarks.stateless_serve import stop_server

REPO = Path(__file__).resolve().parent.parent
ROWS = 8


def _ids(n: int, seed: int, seq: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(3, 1000, (n, seq)).astype(np.int64),
            "attention_mask": np.ones((n, seq), np.int64)}


def _recsys(n: int, seed: int, big: bool = False) -> dict:
    from genie.serving.demo_recommender import BigTableRecommender, TinyRecommender

    model = BigTableRecommender if big else TinyRecommender
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, r, n) for r in model.TABLE_ROWS], axis=1).astype(np.int64)
    return {"sparse_ids": ids, "dense": rng.standard_normal((n, model.DENSE)).astype(np.float32)}


def _pixels(size: int):
    return lambda n, s: {"pixel_values": np.random.default_rng(s).standard_normal((n, 3, size, size)).astype(
        np.float32)}


MODELS = {  # name -> (config file, model name, strategy, inputs(n, seed) or None for /v1/embeddings)
    "clip": ("multimodal.yaml", "clip-demo", "branch_parallel",
             lambda n, s: _ids(n, s, 8) | {"pixel_values": np.random.default_rng(s).standard_normal(
                 (n, 3, 32, 32)).astype(np.float32)}),
    "recsys": ("recommender.yaml", "recommender-demo", "recsys_split", _recsys),
    "sharded": ("recsys-sharded.yaml", "recommender-sharded", "recsys_split", lambda n, s: _recsys(n, s, big=True)),
    "vit": ("vision-pipeline.yaml", "vit-pipeline", "pipeline", _pixels(64)),
    "vision": ("vision.yaml", "resnet-demo", "replicas", _pixels(64)),
    "encoder": ("embeddings.yaml", "minilm", "replicas", None),
}
DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def config(file: str, strategy: str, home: str) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / file).read_text())
    cfg["model"] |= {"strategy": strategy, "max_batch_size": 32}
    cfg["workers"] |= {"launch": 2, "threads": 1, "device": "cpu"}
    cfg["serving"] |= {"http_port": 0, "grpc_port": None}
    cfg["registry"] = {"home": home}
    return cfg


def send(url: str, model: str, make, requests: int) -> None:
    if make is None:
        words = ["a short sentence about serving", "the planner places the parts", "eight inputs per request"]
        for i in range(requests):
            body = json.dumps({"model": model, "input": [f"{words[(i + j) % 3]} {j}" for j in range(ROWS)]})
            req = urllib.request.Request(f"{url}/v1/embeddings", body.encode(), {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=60).read()
        return
    import tritonclient.http as hc

    client = hc.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=60)
    for i in range(requests):
        given = []
        for name, array in make(ROWS, i).items():
            given.append(hc.InferInput(name, list(array.shape), DTYPES[array.dtype]))
            given[-1].set_data_from_numpy(array)
        client.infer(model, given)
    client.close()


def rows_of(name: str, report: dict) -> list[dict]:
    out = []
    for f in report["fragments"]:
        m = f["measured"]
        pred, got = m.get("predicted_step_s_calibrated_at_that_batch"), m.get("fastest_step_s_at_most_common_batch")
        out.append({"model": name, "fragment": f["fragment_id"], "worker": f["worker"],
                    "batch": m.get("most_common_batch"), "predicted_s": pred, "measured_s": got,
                    "predicted_parts": m.get("predicted_parts_at_that_batch") or {},
                    "measured_median_s": m.get("median_step_s_at_most_common_batch"),
                    "error": (pred - got) / got if pred and got else None})
    return out


def measure(name: str, requests: int) -> tuple[list[dict], dict]:
    from genie.serving.process import spawn_server

    file, model, strategy, make = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "genie.yaml"
        path.write_text(yaml.safe_dump(config(file, strategy, str(Path(tmp) / "home"))))
        server = spawn_server(path, timeout=300)
        try:
            send(server.url, model, make, requests)
            with urllib.request.urlopen(f"{server.url}/v1/genie/plans", timeout=30) as resp:
                (report,) = json.loads(resp.read())["data"]
        finally:
            stop_server(server)
    return rows_of(name, report), report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="clip,recsys,sharded,vit,vision,encoder")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--json", help="write the rows and the raw plan reports here")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        ap.error(f"--models: unknown {unknown[0]!r}; choose from {', '.join(MODELS)}")
    rows, reports, load = [], {}, {"before": os.getloadavg()}
    for name in args.models.split(","):
        got, reports[name] = measure(name, args.requests)
        rows += got
    load["after"] = os.getloadavg()
    print(f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after (1 min)")
    print("| model | fragment | batch | predicted us: roofline + dispatch + call | measured fastest (median) us "
          "| error vs fastest (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        fmt = (lambda v: f"{v * 1e6:.0f}" if v else "n/a")
        err = f"{r['error'] * 100:+.0f}%" if r["error"] is not None else "n/a"
        if r["error"] is not None and r["measured_median_s"]:
            err += f" ({(r['predicted_s'] - r['measured_median_s']) / r['measured_median_s'] * 100:+.0f}%)"
        parts = " + ".join(fmt(r["predicted_parts"].get(k)) for k in ("roofline_s", "dispatch_s", "call_s"))
        print(f"| {r['model']} | {r['fragment']} | {r['batch']} | {fmt(r['predicted_s'])}: {parts} | "
              f"{fmt(r['measured_s'])} ({fmt(r['measured_median_s'])}) | {err} |")
    within = sum(1 for r in rows if r["error"] is not None and abs(r["error"]) <= 0.25)
    print(f"{within} of {len(rows)} fragments within 25%")
    for name, rep in reports.items():
        print(f"{name}: calibration {json.dumps(rep['calibration'])}; replan: {json.dumps(rep.get('replan'))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_average": load, "rows": rows, "reports": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
