"""Prefill tokens/s of the engine's batch-invariant native kernels against the batch-dependent ones, in one run.

    python benchmarks/engine_prefill.py [--model-dir DIR] [--threads 1] [--repeat 3]
                                        [--output benchmarks/results/engine-prefill-<UTC time>.json]

SmolLM2-135M in bf16 (the packaged GGUF, converted once), both kernel sets loaded side by side, each case run
`--repeat` times alternately and the best kept: several prompts prefilled together in chunks, as the router
sends them. Invariant: every matmul through native_gemm.cpp and every token attending on its own through the
paged kernel; batch-dependent: oneDNN matmuls and SDPA per chunk. What it prints goes to a results JSON too,
with the load average before and after.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import torch

from genie.benchmarks.engine_decode import default_model_dir
from genie.benchmarks.router_overhead import command_line, default_output, write_results

CASES = ((4, 128, 128), (1, 512, 512), (8, 128, 64), (1, 2048, 512))  # prompts, tokens each, chunk
_ids = itertools.count()


def prefill(frag, prompts: list[list[int]], chunk: int) -> float:
    from genie.workers.engine import SeqStep

    ids = [f"p{next(_ids)}" for _ in prompts]
    length = len(prompts[0])
    start_time = time.perf_counter()
    for start in range(0, length, chunk):
        frag.step([SeqStep(i, start, token_ids=p[start:start + chunk], sample=start + chunk >= length)
                   for i, p in zip(ids, prompts)])
    seconds = time.perf_counter() - start_time
    frag.release(ids)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/engine-prefill-<UTC time>.json)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    from genie.workers.engine import FragmentSpec, load_fragment

    model_dir = str(args.model_dir or default_model_dir())
    frags = {invariant: load_fragment(FragmentSpec(f"f{invariant}", model_dir, dtype="bfloat16",
                                                   kv_cache_bytes=256 << 20), "cpu", batch_invariant=invariant)
             for invariant in (True, False)}
    g = torch.Generator().manual_seed(0)
    print(f"{args.threads} thread(s), bf16, best of {args.repeat}")
    print("prompts x tokens (chunk)   invariant tok/s   batch-dependent tok/s   invariant time ratio")
    cases = []
    for count, length, chunk in CASES:
        prompts = [torch.randint(100, 40000, (length,), generator=g).tolist() for _ in range(count)]
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.repeat):
            for invariant, frag in frags.items():
                best[invariant] = min(best[invariant], prefill(frag, prompts, chunk))
        tokens = count * length
        print(f"{count:3d} x {length:4d} ({chunk:3d})         {tokens / best[True]:10.0f}        "
              f"{tokens / best[False]:14.0f}          {best[True] / best[False]:8.2f}x")
        cases.append({"prompts": count, "tokens_each": length, "chunk": chunk,
                      "invariant_tok_s": tokens / best[True], "batch_dependent_tok_s": tokens / best[False],
                      "invariant_time_ratio": best[True] / best[False]})
    write_results(args.output or default_output("engine-prefill"), {
        "tool": "engine_prefill", "command": command_line(), "threads": args.threads, "repeat": args.repeat,
        "dtype": "bfloat16", "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cases": cases})


if __name__ == "__main__":
    main()
