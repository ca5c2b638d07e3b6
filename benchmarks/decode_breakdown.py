"""Where a batched decode step's time goes: the matmuls alone against everything else, in one run.

    python benchmarks/decode_breakdown.py [--batch 32] [--context 100-200] [--threads 2,1] [--rounds 15]
                                          [--baseline DIR]

SmolLM2-135M in bf16 on the engine's default (batch-invariant native) kernels. `--batch` sequences are
prefilled with random tokens to contexts spread evenly over `--context`, then every round times, at each thread
count, one real decode step (`Fragment.step`), and then each part of that same step on its own, replayed with the
step's own batch (its positions, KV slots and block tables, recorded from a second, untimed step):

- matmuls: every linear of the step (30 layers x qkv, o + residual, gate_up, down + residual, and the LM head)
  through the engine's own kernel on [batch, K] inputs (one torch.ops call each, ~121 calls of a few
  microseconds of dispatch included); their FLOP/s against the machine's bf16 matmul peak
  at the same thread count (oneDNN on 2048 x 2048, best of 5, as `roofline.measure_tflops`);
- attention over the paged KV cache, RoPE + the KV cache write, RMSNorm, SiLU-and-multiply, argmax, the
  embedding lookup, and greedy sampling's Python;
- the rest: the model's forward minus its kernels is per-op Python and dispatch ("layer glue"); the step minus
  the model is the step's own bookkeeping (validation, block tables, the batch's index tensors, results).

A diagnostic: the decoder layers' matmuls with each layer's own weights (212 MB, streamed from memory, as in a
step) against the same calls on layer 0's 7 MB every time (which stay in the last-level cache), which says what
streaming the weights from memory costs. The replays write their own keys and values into the recorded step's
cache slots, so the tokens the sequences decode afterwards are noise; only their timing counts.

Systems, measured round by round in turn: this tree's kernels ("this tree"), the same with every decoder layer's
kernels called one by one from Python ("this tree, op by op"; only where the one-call layer op exists), and with
`--baseline DIR`, another version's native kernels built beside these (benchmarks/native_baseline.py; e.g.
`git archive HEAD workers/engine | tar -x -C /tmp/base` and `--baseline /tmp/base/workers/engine`).

Prints the table per thread count and system and writes it, with the load average before and after, to
benchmarks/results/decode-breakdown-<UTC time>.json (`--output`). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genie.benchmarks.engine_decode import default_model_dir
from genie.benchmarks.roofline import MATMUL_SIZE, REPEATS
from genie.benchmarks.router_overhead import command_line, default_output, write_results
from genie.benchmarks.report import machine

TARGET = 1.25  # issue 16: a batch-32 step at most this times its matmul time


class Recorder:
    """Keeps the arguments of the model's forward for one step (its AttnBatch: the step's real block tables)."""

    def __init__(self, model) -> None:
        self.model, self.batch = model, None

    def __enter__(self) -> Recorder:
        forward = self.model.forward

        def record(x, batch, kv):
            self.batch = batch
            return forward(x, batch, kv)

        self.model.forward = record
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward  # the class's method shows through again


class Sequences:
    """`batch` sequences decoding one token a step, prefilled to the given contexts."""

    def __init__(self, frag, contexts: list[int], tag: str = "", seed: int = 0) -> None:
        from genie.workers.engine import SeqStep

        self.frag, self.ids = frag, [f"breakdown{tag}-{i}" for i in range(len(contexts))]
        g = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(100, 40000, (n,), generator=g).tolist() for n in contexts]
        results = frag.step([SeqStep(s, 0, p, sample=True) for s, p in zip(self.ids, prompts)])
        self.pos, self.tokens = list(contexts), [r.token_id for r in results]

    def step(self) -> None:
        from genie.workers.engine import SeqStep

        steps = [SeqStep(s, p, [t], sample=True) for s, p, t in zip(self.ids, self.pos, self.tokens)]
        self.tokens = [r.token_id for r in self.frag.step(steps)]
        self.pos = [p + 1 for p in self.pos]

    def release(self) -> None:
        self.frag.release(self.ids)


CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: this process's CPU time (one thread only)


def timed(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def matmul_calls(model, batch: int, resident: bool = False, head: bool = True) -> tuple[Callable[[], None], int]:
    """One step's linears in the order a step runs them, on random [batch, K] inputs, and their FLOPs.
    resident: every layer's calls use layer 0's weights (which then stay in the last-level cache)."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).bfloat16()

    calls, flops = [], 0
    for layer in model.layers:
        src = model.layers[0] if resident else layer
        for lin, residual in ((src.qkv, False), (src.o, True), (src.gate_up, False), (src.down, True)):
            x, r = rand(batch, lin.in_features), rand(batch, lin.out_features) if residual else None
            calls.append((lin, x, r))
            flops += 2 * batch * lin.in_features * lin.out_features
    if head:
        calls.append((model.head, rand(batch, model.head.in_features), None))
        flops += 2 * batch * model.head.in_features * model.head.out_features

    def run() -> None:  # the kernel straight, as the one-call layer calls it (no Linear method around it)
        for lin, x, r in calls:
            lin.op(x, lin.packed, lin.out_features, lin.bias, r, "")

    return run, flops


def replays(frag, batch) -> dict[str, Callable[[], None]]:
    """Each kernel group of a step, on the step's own batch (positions, slots, block tables) and each layer's
    own weights and cache, with random activations of the step's shapes."""
    ops, model, g = frag._kernels.ops, frag.model, torch.Generator().manual_seed(2)
    layer0, tokens = model.layers[0], batch.positions.shape[0]
    shape, hidden = layer0.shape, model.embedding.shape[1]
    width = (shape.heads + 2 * shape.kv_heads) * shape.dim

    def rand(*dims):
        return torch.randn(*dims, generator=g).bfloat16()

    qkvs = [rand(tokens, width) for _ in model.layers]
    xs, gate_ups = rand(tokens, hidden), rand(tokens, layer0.gate_up.out_features)
    norms = [w for layer in model.layers for w in (layer.input_norm, layer.post_norm)] + [model.norm]
    logits = rand(len(batch.last_rows), model.head.out_features)
    caches = list(zip(frag.kv.keys, frag.kv.values))
    rows = batch.rows

    def rope_kv() -> None:
        for qkv, (kc, vc) in zip(qkvs, caches):
            ops.rope_kv_write(qkv, model.rope.cos32, model.rope.sin32, batch.positions, batch.slots, kc, vc,
                              shape.heads, shape.kv_heads)

    def attention() -> None:
        for qkv, (kc, vc) in zip(qkvs, caches):
            q = qkv[:, : shape.heads * shape.dim].view(tokens, shape.heads, shape.dim)
            ops.paged_decode_attention(q, kc, vc, rows.tables, rows.lens, rows.block_size, shape.dim**-0.5)

    from genie.workers.contract import SamplingParams
    from genie.workers.engine.sampling import sample_rows

    params, positions = [SamplingParams()] * logits.shape[0], list(range(logits.shape[0]))
    ids = torch.randint(100, 40000, (tokens,), generator=g)
    return {
        "attention (paged KV)": attention,
        "RoPE + KV write": rope_kv,
        "RMSNorm": lambda: [ops.rms_norm(xs, w, layer0.eps) for w in norms],
        "SiLU * mul": lambda: [ops.silu_mul(gate_ups) for _ in model.layers],
        "argmax": lambda: ops.argmax_rows(logits),
        "sampling (Python)": lambda: sample_rows(logits, params, positions, frag._rng, list(range(len(params)))),
        "embedding": lambda: F.embedding(ids, model.embedding),
        "_model": lambda: model_pass(frag, ids, batch),
    }


def model_pass(frag, ids: torch.Tensor, batch) -> None:
    """The model alone on the recorded batch: embed, layers, final norm + head, argmax."""
    model = frag.model
    x = model.forward(model.embed(ids, batch.positions), batch, frag.kv)
    frag._kernels.argmax(model.logits(x.index_select(0, torch.tensor(batch.last_rows))))


def fuses(frag) -> bool:
    """Whether this fragment's kernels have the one-call decoder layer (native_layer.cpp)."""
    return getattr(frag._kernels, "fused_layer", None) is not None


def peak_tflops() -> float:
    """bf16 matmul TFLOP/s of oneDNN on 2048 x 2048, best of 5 (roofline.measure_tflops, on this run's clock)."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE).bfloat16() for _ in range(2))
    torch.matmul(a, b)  # warm-up
    return 2 * MATMUL_SIZE**3 / min(timed(lambda: torch.matmul(a, b)) for _ in range(REPEATS)) / 1e12


@dataclass
class System:
    name: str
    frag: Any
    fuse: bool  # NativeKernels.fuse_layers while this system runs
    seqs: Sequences | None = None

    def __enter__(self) -> System:
        self.frag._kernels.fuse_layers = self.fuse
        return self

    def __exit__(self, *exc) -> None:
        self.frag._kernels.fuse_layers = fuses(self.frag)


def one_round(system: System) -> dict[str, float]:
    """One real step timed, a second one recorded, then each part of it on its own, in seconds."""
    seqs, batch = system.seqs, len(system.seqs.ids)
    with system:
        step = timed(seqs.step)
        with Recorder(system.frag.model) as rec:
            seqs.step()
        matmul, _ = matmul_calls(system.frag.model, batch)
        layers, _ = matmul_calls(system.frag.model, batch, head=False)
        resident, _ = matmul_calls(system.frag.model, batch, resident=True, head=False)
        parts = {"step": step, "matmuls": timed(matmul), "_layers": timed(layers), "_resident": timed(resident)}
        parts.update({name: timed(fn) for name, fn in replays(system.frag, rec.batch).items()})
    return parts


def measure(systems: list[System], threads: int, rounds: int) -> list[dict]:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    peak = peak_tflops()
    batch = len(systems[0].seqs.ids)
    _, flops = matmul_calls(systems[0].frag.model, batch)
    _, layer_flops = matmul_calls(systems[0].frag.model, batch, head=False)
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
    for i in range(rounds + 2):  # two warm-up rounds
        for system in systems:
            parts = one_round(system)
            if i >= 2:
                for name, t in parts.items():
                    samples[system.name].setdefault(name, []).append(t)
    load_after = os.getloadavg()
    rows = []
    for system in systems:
        med = {name: statistics.median(ts) * 1e3 for name, ts in samples[system.name].items()}
        rows.append({"system": system.name, **summarise(med, threads, peak, flops, layer_flops, system.seqs,
                                                        load_before, load_after)})
    return rows


def summarise(med: dict[str, float], threads: int, peak: float, flops: int, layer_flops: int, seqs: Sequences,
              load_before, load_after) -> dict:
    kernels = [k for k in med if not k.startswith("_") and k not in ("step", "matmuls", "sampling (Python)")]
    model, step = med["_model"], med["step"]
    parts = {k: med[k] for k in ["matmuls", *kernels]}
    parts["layer glue (Python, dispatch)"] = model - sum(parts.values())
    parts["sampling (Python)"] = med["sampling (Python)"]
    parts["step bookkeeping"] = step - model - med["sampling (Python)"]
    return {
        "threads": threads,
        "load_before": list(load_before),
        "load_after": list(load_after),
        "mean_context": statistics.mean(seqs.pos),
        "peak_tflops": peak,
        "step_ms": step,
        "model_ms": model,
        "matmul_ms": med["matmuls"],
        "matmul_gflop": flops / 1e9,
        "matmul_tflops": flops / med["matmuls"] / 1e9,
        "matmul_share_of_peak": flops / med["matmuls"] / 1e9 / peak,
        "step_over_matmul": step / med["matmuls"],
        "target_step_over_matmul": TARGET,
        "layer_matmuls_ms": med["_layers"],
        "layer_matmuls_resident_ms": med["_resident"],
        "layer_matmul_tflops": layer_flops / med["_layers"] / 1e9,
        "layer_matmul_resident_tflops": layer_flops / med["_resident"] / 1e9,
        "parts_ms": parts,
    }


def report(row: dict, batch: int) -> None:
    load = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(f"\n{row['system']}: {row['threads']} thread(s), batch {batch}, mean context {row['mean_context']:.0f} "
          f"tokens, load average {load(row['load_before'])} -> {load(row['load_after'])}")
    print(f"  bf16 matmul peak (oneDNN 2048^2): {row['peak_tflops']:.3f} TFLOP/s")
    step = row["step_ms"]
    for name, ms in row["parts_ms"].items():
        print(f"  {name:32s} {ms:8.2f} ms  {ms / step:6.1%}")
    print(f"  {'decode step (Fragment.step)':32s} {step:8.2f} ms")
    print(f"  matmuls: {row['matmul_gflop']:.2f} GFLOP at {row['matmul_tflops']:.3f} TFLOP/s = "
          f"{row['matmul_share_of_peak']:.0%} of peak; step / matmul time = {row['step_over_matmul']:.2f}x "
          f"(target <= {TARGET:.2f}x: {'met' if row['step_over_matmul'] <= TARGET else 'NOT met'})")
    print(f"  decoder layers' matmuls: {row['layer_matmuls_ms']:.2f} ms with their own weights "
          f"({row['layer_matmul_tflops']:.3f} TFLOP/s), {row['layer_matmuls_resident_ms']:.2f} ms on layer 0's "
          f"weights, cached ({row['layer_matmul_resident_tflops']:.3f} TFLOP/s)")


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    return f"{name or 'unknown CPU'}, {os.cpu_count()} CPUs"


def contexts(spec: str, batch: int) -> list[int]:
    lo, _, hi = spec.partition("-")
    lo, hi = int(lo), int(hi or lo)
    return [lo + (hi - lo) * i // max(1, batch - 1) for i in range(batch)]


def make_systems(args: argparse.Namespace, model_dir: Path) -> list[System]:
    from genie.workers.engine import FragmentSpec, load_fragment
    from genie.workers.engine.linear import InvariantLinear

    steps = 2 * (args.rounds + 2) * len(args.threads)  # each round decodes two tokens a sequence
    tokens = args.batch * (int(args.context.split("-")[-1]) + steps + 64)
    kv_mib = max(64, 2 * tokens * 23040 >> 20)  # SmolLM2: 23,040 bytes of K and V per token; two systems' worth
    spec = FragmentSpec("breakdown", str(model_dir), dtype="bfloat16", kv_cache_bytes=kv_mib << 20)
    frag = load_fragment(spec, kernels="native")
    if not isinstance(frag.model.layers[0].qkv, InvariantLinear):
        sys.exit("decode_breakdown: this CPU has no batch-invariant bf16 matmul (it needs AVX512-BF16)")
    systems = [System("this tree", frag, fuse=fuses(frag))]
    if fuses(frag):
        systems.append(System("this tree, op by op", frag, fuse=False))
    if args.baseline is not None:
        from genie.benchmarks.native_baseline import baseline_fragment

        base = baseline_fragment(spec, args.baseline)
        systems.append(System(f"baseline {args.baseline}", base, fuse=fuses(base)))
    return systems


def main(argv: list[str] | None = None) -> None:
    global CLOCK
    args = _parse(argv)
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    model_dir = args.model_dir or default_model_dir()
    systems = make_systems(args, model_dir)
    print(f"model {model_dir}\nmachine {cpu_model()}, torch {torch.__version__}")
    rows = []
    try:
        for i, system in enumerate(systems):
            with system:
                system.seqs = Sequences(system.frag, contexts(args.context, args.batch), tag=str(i))
        for threads in args.threads:
            rows.extend(measure(systems, threads, args.rounds))
            for row in rows[-len(systems):]:
                report(row, args.batch)
            compare(rows[-len(systems):])
    finally:
        for system in systems:
            if system.seqs is not None:
                system.seqs.release()
    write_results(args.output or default_output("decode-breakdown"), {
        "command": command_line(), "model": str(model_dir), "machine": {**machine(), "cpu": cpu_model()},
        "batch": args.batch, "context": args.context, "rounds": args.rounds, "clock": args.clock, "rows": rows,
    })


def compare(rows: list[dict]) -> None:
    first = rows[0]
    for row in rows[1:]:
        print(f"  {first['system']} against {row['system']}: step {first['step_ms']:.2f} vs {row['step_ms']:.2f} ms "
              f"({first['step_ms'] / row['step_ms']:.2f}x), matmuls {first['matmul_ms']:.2f} vs "
              f"{row['matmul_ms']:.2f} ms ({first['matmul_ms'] / row['matmul_ms']:.2f}x)")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="HF folder; default: SmolLM2-135M-Instruct")
    p.add_argument("--batch", type=int, default=32, help="sequences decoding together (default 32)")
    p.add_argument("--context", default="100-200", help="prefilled tokens, LO-HI spread over the batch (100-200)")
    p.add_argument("--threads", default="2,1", help="torch thread counts to measure, in order (default 2,1)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per thread count (default 15)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another version's workers/engine folder: its native kernels are measured too")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time, or this process's CPU time, which a host shared with other jobs moves less "
                        "(needs --threads 1: the CPU time of several threads adds up)")
    p.add_argument("--output", type=Path, default=None, help="results JSON (default benchmarks/results/...)")
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
        lo, _, hi = args.context.partition("-")
        bad = int(lo) < 1 or (hi and int(hi) < int(lo))
    except ValueError:
        p.error("--threads takes integers like 2,1 and --context LO-HI like 100-200")
    if args.clock == "cpu" and args.threads != [1]:
        p.error("--clock cpu needs --threads 1: the CPU time of several threads adds up")
    if bad or args.batch < 1 or args.rounds < 1 or min(args.threads) < 1:
        p.error("--batch, --rounds, --threads and --context must be positive (and LO <= HI)")
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
