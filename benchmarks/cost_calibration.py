"""Predicted against measured step time per plan fragment, in one run, on this machine.

    python benchmarks/cost_calibration.py [--models clip,recsys,sharded,vit,vision,encoder] [--batch 8]
                                          [--threads 1] [--repeat 30] [--gap 2] [--json FILE]

The cost model is calibrated from the device probes a worker runs at start-up (workers/device.py: copy
bandwidth, matmul FLOP/s, dispatch per op and per module call, and the cold start of a call), never from the
times it is checked against. Each plan's fragments are built as a worker builds them (the FragmentSpecs
genie-serve sends, cut by workers/stateless: CLIP branches, recsys tables and dense parts, row shards of a big
table, pipeline stages, whole models) and run in this process as StatelessFragments with the worker's thread
count, each on what the fragments before it returned. Timed: the span a worker reports as compute_seconds, over
`--repeat` calls at `--batch` rows, back to back, and each after a `--gap` ms pause (served calls come 1-3 ms
apart, so the paused figure is the one the served measurement sees). The probes run again right before each
fragment is timed, so a machine busy with other jobs slows both alike (as far as a busy machine is steady over a
second).
"""

from __future__ import annotations

import argparse
import json
import os
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
from genie.serving.demo_recommender import BigTableRecommender, TinyRecommender
from genie.serving.stateless.executors import specs_for
from genie.workers.contract import STATELESS, FragmentSpec
from genie.workers.device import probe_device
from genie.workers.stateless.branches import BRANCH_PARTS, branch_part
from genie.workers.stateless.fragment import StatelessFragment
from genie.workers.stateless.loading import Built, InputSig
from genie.workers.stateless.split import split_part
from genie.workers.stateless.stages import STAGE, stage_part

Inputs = dict[str, torch.Tensor]
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Case:
    name: str  # the row's label
    factory: Callable[[], tuple[torch.nn.Module, Inputs]]
    strategy: str  # the plan the fragments come from
    make: Callable[[int], Inputs]  # batch -> the model's inputs
    memory_mib: int = 8192  # each worker's planning budget (small ones force a pipeline or row shards)


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


def _recsys_inputs(rows: tuple[int, ...], dense: int) -> Callable[[int], Inputs]:
    def make(n: int) -> Inputs:
        g = torch.Generator().manual_seed(n)
        ids = torch.stack([torch.randint(0, r, (n,), generator=g) for r in rows], dim=1)
        return {"sparse_ids": ids, "dense": torch.randn(n, dense, generator=g)}

    return make


CASES = [
    Case("clip", demo_models.tiny_clip, "branch_parallel",
         lambda n: _ids(n, 8) | {"pixel_values": torch.randn(n, 3, 32, 32)}),
    Case("recsys", demo_models.tiny_recommender, "recsys_split",
         _recsys_inputs(TinyRecommender.TABLE_ROWS, TinyRecommender.DENSE)),
    Case("sharded", demo_models.big_table_recommender, "recsys_split",
         _recsys_inputs(BigTableRecommender.TABLE_ROWS, BigTableRecommender.DENSE), memory_mib=2),
    Case("vit", demo_models.vit_classifier, "pipeline", lambda n: {"pixel_values": torch.randn(n, 3, 64, 64)},
         memory_mib=20),
    Case("vision", demo_models.tiny_resnet, "replicas", lambda n: {"pixel_values": torch.randn(n, 3, 64, 64)}),
    Case("encoder", tiny_bert, "replicas", lambda n: _ids(n, 16)),
]


def part_of(built: Built, spec: FragmentSpec) -> Built:
    """What a worker cuts out of the model for `spec` (as workers/stateless/fragment.load_stateless does)."""
    if spec.part == STAGE:
        return stage_part(built, spec.cut, spec.layer_start, spec.layer_end, spec.fragment_id)
    if spec.part in BRANCH_PARTS:
        return branch_part(built, spec.part, spec.fragment_id)
    if spec.part or spec.cut:
        return split_part(built, spec.part, spec.cut, spec.fragment_id)
    return built


def fragments(model: torch.nn.Module, p, x: Inputs) -> list[tuple[object, StatelessFragment, Inputs]]:
    """(plan fragment, the StatelessFragment its worker would run, its inputs at x's batch) for the first replica,
    in stage order, each fed what the stages before it returned (the tables shards' "pooled" added up, as the
    router adds them)."""
    built = Built(model, tuple(InputSig(k, not v.is_floating_point(), (1, *v.shape[1:])) for k, v in x.items()),
                  frozenset(x), False, None, None, None, "py")
    specs = specs_for(p, FragmentSpec(fragment_id="", model_dir="", kind=STATELESS, dtype="float32"))
    values, out = dict(x), []
    group = p.replicas()[0]
    for stage in sorted({f.stage for f in group}):
        produced: Inputs = {}
        for f in (f for f in group if f.stage == stage):
            part = part_of(built, specs[f.fragment_id])
            frag = StatelessFragment(f.fragment_id, part, torch.float32, CPU)
            given = {s.name: values[s.name] for s in part.inputs if s.name in values}
            out.append((f, frag, given))
            with torch.no_grad():
                for k, v in frag.run(given).items():
                    produced[k] = produced[k] + v if k in produced else v
        values.update(produced)
    return out


def timed(frag: StatelessFragment, x: Inputs, repeat: int, gap_s: float) -> list[float]:
    """compute_seconds of `repeat` calls (after one untimed call), each after a pause of `gap_s` when given."""
    times = []
    with torch.no_grad():
        frag.run(x)
        for _ in range(repeat):
            if gap_s:
                time.sleep(gap_s)  # the pause between served calls is the condition measured, not work
            frag.run(x)
            times.append(frag.last_compute_s)
    return times


def probed_cluster(memory_mib: int) -> ClusterSpec:
    facts = probe_device(CPU, torch.float32)
    nominal = ClusterSpec(tuple(WorkerSpec(f"w{i}", "cpu", memory_mib << 20, 1e12, 5e10) for i in range(2)), 1.25e9)
    m = Measured(facts.tflops * 1e12, facts.bandwidth_gbps * 1e9, facts.op_us * 1e-6, facts.module_us * 1e-6,
                 facts.call_us * 1e-6)
    return calibrated(nominal, {"w0": m, "w1": m})


def run_case(case: Case, batch: int, repeat: int, gap_s: float) -> list[dict]:
    model, example = case.factory()
    profile = analyze(model, example, case.name)
    p = plan(profile, probed_cluster(case.memory_mib), PlanOptions(strategy=case.strategy))
    rows = []
    for f, frag, x in fragments(model, p, case.make(batch)):
        blocks = recost.blocks_of(profile, f)
        cluster = probed_cluster(case.memory_mib)  # probed right before the fragment is timed: both see one machine
        worker = cluster.worker(f.worker)
        warm, cold = timed(frag, x, repeat, 0.0), timed(frag, x, repeat, gap_s)
        predicted = recost.step_time(profile, cluster, f, batch)
        rows.append({"model": case.name, "strategy": p.strategy, "fragment": f.fragment_id, "role": f.role,
                     "ops": sum(b.ops for b in blocks), "modules": sum(b.modules for b in blocks),
                     "lookups": sum(b.lookups for b in blocks),
                     "roofline_s": bc.roofline(blocks, worker, batch), "dispatch_s": bc.dispatch(blocks, worker),
                     "call_s": worker.call_s, "predicted_s": predicted,
                     "measured_s": min(cold), "measured_median_s": statistics.median(cold),
                     "back_to_back_s": min(warm), "back_to_back_median_s": statistics.median(warm),
                     "error": (predicted - min(cold)) / min(cold),
                     "error_median": (predicted - statistics.median(cold)) / statistics.median(cold),
                     "op_us": worker.op_s * 1e6, "module_us": worker.module_s * 1e6, "call_us": worker.call_s * 1e6,
                     "flops_per_s": worker.flops, "bandwidth": worker.bandwidth})
    return rows


def table(rows: list[dict]) -> None:
    print("| model | fragment | ops / modules | roofline us | dispatch + call us | predicted us "
          "| after a pause: fastest (median) us | back to back fastest us | error vs fastest (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['fragment']} | {r['ops']} / {r['modules']} | {r['roofline_s'] * 1e6:.0f} | "
              f"{(r['dispatch_s'] + r['call_s']) * 1e6:.0f} | {r['predicted_s'] * 1e6:.0f} | "
              f"{r['measured_s'] * 1e6:.0f} ({r['measured_median_s'] * 1e6:.0f}) | {r['back_to_back_s'] * 1e6:.0f} | "
              f"{r['error'] * 100:+.0f}% ({r['error_median'] * 100:+.0f}%) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cases = {c.name: c for c in CASES}
    ap.add_argument("--models", default=",".join(cases))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--gap", type=float, default=2.0, help="ms of pause before each timed call")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(cases))
    if unknown:
        ap.error(f"--models: unknown {unknown[0]!r}; choose from {', '.join(cases)}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [r for name in args.models.split(",") for r in run_case(cases[name], args.batch, args.repeat,
                                                                   args.gap / 1000)]
    load_after = os.getloadavg()
    print(f"batch {args.batch}, {args.threads} thread(s), pause {args.gap:g} ms; calibration re-probed before each "
          f"fragment; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)")
    table(rows)
    within = sum(abs(r["error"]) <= 0.25 for r in rows)
    print(f"{within} of {len(rows)} fragments within 25% of the fastest call after a pause")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "threads": args.threads, "gap_s": args.gap / 1000,
                       "load_before": load_before, "load_after": load_after, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
