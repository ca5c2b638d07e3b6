"""Split plans against the one-worker baseline, in one run: each split demo served as planned and whole on one
worker.

    python benchmarks/split_plans.py [--plans recsys,clip,vision] [--requests N] [--clients C] [--rounds R]
                                     [--json FILE]

- recsys: the demo recommender (configs/recommender.yaml) as a recsys split (tables on one worker, dense
  interaction + MLP on the other); one example per request.
- clip: the demo CLIP (configs/multimodal.yaml) branch-parallel (vision and text encoders on two workers at
  once, the fusion beside the heavier one); 8 image-text pairs per request, one forward each.
- vision: an 8-layer ViT classifier (configs/vision-pipeline.yaml) pipelined over two workers whose planning
  budget (workers.memory_mib: 20) cannot hold it whole; micro-batches stream through both stages at once. One
  64 x 64 image per request. Its baseline's budget is raised so that one worker holds the whole model.
Each system is a genie-serve subprocess (free ports, one thread per worker, a fresh registry per plan), the
baseline the same config with `strategy: replicas` on one worker. Requests go through the real
`tritonclient.http`; answers are checked against the module in-process (exact) before timing. Two phases per
system: one client (unloaded latency), then C closed-loop clients (throughput). Link bytes per request come
from GET /v1/genie/plans: the workers' own Stats counters over the rows served, beside the plan's prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from genie.benchmarks.stateless_serve import stop_server
from genie.serving import demo_models
from genie.serving.demo_recommender import TinyRecommender

REPO = Path(__file__).resolve().parent.parent
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Demo:
    config: str
    model: str
    strategy: str
    rows: int  # examples per request
    make: Callable[[int, int], Arrays]  # (examples, seed) -> inputs
    factory: str  # demo_models function


def recsys_inputs(n: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, r, n) for r in TinyRecommender.TABLE_ROWS], axis=1).astype(np.int64)
    return {"sparse_ids": sparse, "dense": rng.standard_normal((n, TinyRecommender.DENSE)).astype(np.float32)}


def vision_inputs(n: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {"pixel_values": rng.standard_normal((n, 3, 64, 64)).astype(np.float32)}


def clip_inputs(n: int, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(3, 1000, (n, 8)).astype(np.int64), "attention_mask": np.ones((n, 8), np.int64),
            "pixel_values": rng.standard_normal((n, 3, 32, 32)).astype(np.float32)}


DEMOS = {
    "recsys": Demo("recommender.yaml", "recommender-demo", "recsys_split", 1, recsys_inputs, "tiny_recommender"),
    "clip": Demo("multimodal.yaml", "clip-demo", "branch_parallel", 8, clip_inputs, "tiny_clip"),
    "vision": Demo("vision-pipeline.yaml", "vit-pipeline", "pipeline", 1, vision_inputs, "vit_classifier"),
}
OUTPUTS = {"recsys_split": ("scores",), "branch_parallel": ("logits_per_image", "text_embeds"), "pipeline": ("logits",)}
BASELINE_MIB = 1024  # the one-worker baseline's planning budget: enough for any demo whole
DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


def config(demo: Demo, strategy: str, workers: int, home: str) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / demo.config).read_text())
    cfg["model"] |= {"strategy": strategy, "max_batch_size": 32}
    cfg["workers"] |= {"launch": workers, "threads": 1, "device": "cpu"}
    cfg["serving"] |= {"http_port": 0, "grpc_port": None}
    cfg["registry"] = {"home": home}
    if strategy == "replicas" and "memory_mib" in cfg["workers"]:
        cfg["workers"]["memory_mib"] = BASELINE_MIB
    return cfg


def infer(client, model: str, inputs: Arrays):
    import tritonclient.http as hc

    given = []
    for name, array in inputs.items():
        given.append(hc.InferInput(name, list(array.shape), DTYPES[array.dtype]))
        given[-1].set_data_from_numpy(array)
    return client.infer(model, given)


def closed_loop(url: str, demo: Demo, requests: int, clients: int) -> dict:
    """`clients` threads, each with its own client, send `requests` requests of demo.rows examples in all."""
    import tritonclient.http as hc

    batches = [demo.make(demo.rows, seed) for seed in range(requests)]

    def run(indices: range) -> list[float]:
        client = hc.InferenceServerClient(url=url, network_timeout=60)
        times = []
        for i in indices:
            started = time.perf_counter()
            infer(client, demo.model, batches[i])
            times.append(time.perf_counter() - started)
        client.close()
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for part in pool.map(run, [range(i, requests, clients) for i in range(clients)]) for t in part]
    seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": requests, "seconds": seconds, "per_s": requests / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def check(url: str, demo: Demo) -> None:
    import tritonclient.http as hc

    model, _ = getattr(demo_models, demo.factory)()
    inputs = demo.make(demo.rows * 2 if demo.rows == 1 else demo.rows, 99)
    got = infer(hc.InferenceServerClient(url=url), demo.model, inputs)
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    for name in OUTPUTS[demo.strategy]:
        # The pipeline runs its batch as micro-batches, whose convolutions may round differently: fp32 1e-4.
        close = np.array_equal if demo.strategy != "pipeline" else lambda a, b: np.allclose(a, b, rtol=0, atol=1e-4)
        if not close(got.as_numpy(name), want[name].numpy()):
            raise SystemExit(f"split_plans: {demo.model} {name} differs from the module in-process")


def plans(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/v1/genie/plans", timeout=30) as resp:
        (report,) = json.loads(resp.read())["data"]
    fragments = {}
    for f in report["fragments"]:
        m, p = f["measured"], f["predicted"]
        fragments[f["fragment_id"]] = {
            "worker": f["worker"], "role": f["role"], "predicted_step_s_at_planned_batch": p["step_s_calibrated"],
            "measured_step_s_by_batch": m.get("step_s_by_batch"), "mean_batch": m.get("mean_batch"),
            "predicted_input_bytes_per_request": p["input_bytes_per_request"],
            "worker_bytes_received_per_request": m.get("worker_bytes_received_per_request"),
            "worker_bytes_sent_per_request": m.get("worker_bytes_sent_per_request"),
            "weight_bytes": m.get("weight_bytes"),
        }
    return {"strategy": report["strategy"], "fragments": fragments, "links": report["links"]}


def measure(name: str, demo: Demo, strategy: str, workers: int, home: str, args) -> dict:
    from genie.serving.process import spawn_server

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "genie.yaml"
        path.write_text(yaml.safe_dump(config(demo, strategy, workers, home)))
        server = spawn_server(path, timeout=300)
        try:
            url = server.url.removeprefix("http://")
            check(url, demo)
            alone = closed_loop(url, demo, max(args.requests // 4, 50), 1)
            loaded = closed_loop(url, demo, args.requests, args.clients)
            return {"system": name, "rows_per_request": demo.rows, "alone": alone, "loaded": loaded,
                    **plans(server.url)}
        finally:
            stop_server(server)


def table(results: list[dict]) -> str:
    loaded = f"{results[0]['loaded']['clients']} clients p50/p99 ms"
    lines = [f"{'system':34} {'1 client p50/p99 ms':>20} {loaded:>22} {'req/s':>8}  "
             "link bytes per example (measured / predicted)"]
    for r in results:
        a, m = r["alone"], r["loaded"]
        link = "; ".join(f"{k['src']}->{k['dst']} {k['measured_payload_bytes_per_request']:.1f} payload, "
                         f"{k['measured_worker_bytes_per_request']:.1f} framed / {k['predicted_bytes_per_request']}"
                         for k in r["links"]) or "; ".join(
            f"router->{fid} {f['worker_bytes_received_per_request']:.1f} / {f['predicted_input_bytes_per_request']}"
            for fid, f in r["fragments"].items())
        lines.append(f"{r['system']:34} {a['p50_ms']:9.2f}/{a['p99_ms']:<10.2f} "
                     f"{m['p50_ms']:11.2f}/{m['p99_ms']:<10.2f} {m['per_s']:8.0f}  {link}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default="recsys,clip,vision", help="comma-separated: recsys, clip, vision")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="split and baseline served alternately, this often")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for key in args.plans.split(","):
        demo = DEMOS[key]
        with tempfile.TemporaryDirectory() as home:
            for _ in range(args.rounds):  # alternating, so a noisy neighbour hurts both systems alike
                for name, strategy, workers in ((f"{key}: {demo.strategy} (2 workers)", demo.strategy, 2),
                                                (f"{key}: one worker (whole model)", "replicas", 1)):
                    results.append(measure(name, demo, strategy, workers, home, args))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
