"""Predicted against measured step time per plan fragment, in one run, on this machine.

    python benchmarks/cost_calibration.py [--batch 8] [--threads 1] [--repeat 30] [--json FILE]

The cost model is calibrated from the device probes a worker runs at start-up (workers/device.py: copy
bandwidth, matmul FLOP/s, dispatch per op and per module call), never from the times it is checked against.
Each fragment is then built the way a worker builds it (workers/stateless: the CLIP branches, the recsys
tables and dense parts, a whole vision model, a whole encoder) and timed in this process with the worker's
thread count: the fastest and the median of `--repeat` forwards at `--batch` rows, under no_grad, the span a
worker reports as compute_seconds. The probes run again right before each fragment is timed, so a machine busy with other jobs
slows both alike (as far as a busy machine is steady over a second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genie.semantic import ClusterSpec, PlanOptions, WorkerSpec, analyze, plan
from genie.semantic.cluster import Measured, calibrated
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner import recost
from genie.serving import demo_models
from genie.workers.device import probe_device
from genie.workers.stateless import branches, split
from genie.workers.stateless.loading import Built, InputSig
from genie.workers.stateless.lookups import LookupGuard

Inputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str  # the row's label
    factory: Callable[[], tuple[torch.nn.Module, Inputs]]
    strategy: str  # the plan the fragments come from
    make: Callable[[int], Inputs]  # batch -> the model's inputs


def tiny_bert() -> tuple[torch.nn.Module, Inputs]:
    """A small BERT encoder (2 layers, hidden 64) with seeded random weights, as /v1/embeddings serves one."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    return BertModel(cfg).eval(), {"input_ids": torch.zeros(1, 16, dtype=torch.long),
                                   "attention_mask": torch.ones(1, 16, dtype=torch.long)}


def _ids(n: int, seq: int) -> Inputs:
    g = torch.Generator().manual_seed(n)
    return {"input_ids": torch.randint(3, 1000, (n, seq), generator=g),
            "attention_mask": torch.ones(n, seq, dtype=torch.long)}


def _recsys_inputs(n: int) -> Inputs:
    from genie.serving.demo_recommender import TinyRecommender

    g = torch.Generator().manual_seed(n)
    ids = torch.stack([torch.randint(0, r, (n,), generator=g) for r in TinyRecommender.TABLE_ROWS], dim=1)
    return {"sparse_ids": ids, "dense": torch.randn(n, TinyRecommender.DENSE, generator=g)}


CASES = [
    Case("clip", demo_models.tiny_clip, "branch_parallel",
         lambda n: _ids(n, 8) | {"pixel_values": torch.randn(n, 3, 32, 32)}),
    Case("recsys", demo_models.tiny_recommender, "recsys_split", _recsys_inputs),
    Case("vision", demo_models.tiny_resnet, "replicas", lambda n: {"pixel_values": torch.randn(n, 3, 64, 64)}),
    Case("encoder", tiny_bert, "replicas", lambda n: _ids(n, 16)),
]


def fragments(case: Case, model: torch.nn.Module, batch: int) -> dict[str, tuple[torch.nn.Module, Inputs]]:
    """fragment role -> (the module a worker runs for it, its inputs at `batch` rows)."""
    x = case.make(batch)
    if case.strategy == "replicas":
        return {"whole": (model, x)}
    built = Built(model, tuple(InputSig(k, not v.is_floating_point(), (1, *v.shape[1:])) for k, v in x.items()),
                  frozenset(x), False, None, None, None, "py")
    if case.strategy == "branch_parallel":
        with torch.no_grad():
            img = branches.ImageBranch(model)(x["pixel_values"])
            txt = branches.TextBranch(model)(x["input_ids"], x["attention_mask"])
        return {"branch:image": (branches.ImageBranch(model), {"pixel_values": x["pixel_values"]}),
                "branch:text": (branches.TextBranch(model), {k: x[k] for k in ("input_ids", "attention_mask")}),
                "fusion": (branches.Fusion(model), img | txt)}
    cut = tuple(sorted({n.target for n in torch.fx.symbolic_trace(model).graph.nodes
                        if n.op == "call_module" and isinstance(model.get_submodule(n.target), torch.nn.Embedding)}))
    tables = split.split_part(built, split.TABLES, cut, "tables").module
    dense = split.split_part(built, split.DENSE, cut, "dense").module
    with torch.no_grad():
        pooled = tables(**{k: x[k] for k in ("sparse_ids",)})
    return {"sparse": (tables, {"sparse_ids": x["sparse_ids"]}), "dense": (dense, pooled | {"dense": x["dense"]})}


def measure(module: torch.nn.Module, x: Inputs, repeat: int) -> tuple[float, float]:
    """(median, fastest) seconds of a forward, with the id checks a worker runs around its lookups. The probes
    keep their fastest run, so the fastest forward is the like-for-like figure on a machine other jobs share."""
    guard = LookupGuard(module)
    with torch.no_grad(), guard.watching(x):
        module(**x)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            module(**x)
            times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def probed_cluster() -> ClusterSpec:
    facts = probe_device(torch.device("cpu"), torch.float32)
    nominal = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", 8 << 30, 1e12, 5e10) for i in range(2)), 1.25e9)
    m = Measured(facts.tflops * 1e12, facts.bandwidth_gbps * 1e9, facts.op_us * 1e-6, facts.module_us * 1e-6)
    return calibrated(nominal, {"w0": m, "w1": m})


def run_case(case: Case, batch: int, repeat: int) -> list[dict]:
    model, example = case.factory()
    profile = analyze(model, example, case.name)
    p = plan(profile, probed_cluster(), PlanOptions(strategy=case.strategy))
    mods = fragments(case, model, batch)
    rows = []
    for f in p.fragments:
        key = "whole" if case.strategy == "replicas" else (f.role if case.strategy == "recsys_split" else
                                                            f.fragment_id)
        if key not in mods:
            continue
        blocks = recost.blocks_of(profile, f)
        cluster = probed_cluster()  # probed right before the fragment is timed: both see the same machine
        worker = cluster.worker(f.worker)
        median, fastest = measure(*mods.pop(key), repeat)
        predicted = recost.step_time(profile, cluster, f, batch)
        rows.append({"model": case.name, "fragment": f.fragment_id if key != "whole" else "whole",
                     "ops": sum(b.ops for b in blocks), "modules": sum(b.modules for b in blocks),
                     "roofline_s": bc.roofline(blocks, worker, batch), "dispatch_s": bc.dispatch(blocks, worker),
                     "predicted_s": predicted, "measured_s": fastest, "measured_median_s": median,
                     "error": (predicted - fastest) / fastest, "error_median": (predicted - median) / median,
                     "op_us": worker.op_s * 1e6,
                     "module_us": worker.module_s * 1e6})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [r for case in CASES for r in run_case(case, args.batch, args.repeat)]
    print(f"batch {args.batch}, {args.threads} thread(s); calibration re-probed before each fragment")
    print("| model | fragment | ops / modules | roofline us | dispatch us | predicted us "
          "| measured fastest (median) us | error vs fastest (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['fragment']} | {r['ops']} / {r['modules']} | {r['roofline_s'] * 1e6:.0f} | "
              f"{r['dispatch_s'] * 1e6:.0f} | {r['predicted_s'] * 1e6:.0f} | {r['measured_s'] * 1e6:.0f} "
              f"({r['measured_median_s'] * 1e6:.0f}) | {r['error'] * 100:+.0f}% ({r['error_median'] * 100:+.0f}%) |")
    within = sum(abs(r["error"]) <= 0.25 for r in rows)
    print(f"{within} of {len(rows)} fragments within 25%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
