"""Options of `genie-bench compare`: flags parsed and checked once, then passed around as frozen data.

`--quick` changes the defaults of the size flags (a ~3-minute run); a size flag given explicitly wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SYSTEMS = ("hf", "engine", "serve", "blind")
DTYPES = ("auto", "bfloat16", "float32", "float16")


@dataclass(frozen=True, slots=True)
class Sizes:
    num_prompts: int  # prompts of the many-stream rows
    serial_prompts: int  # prompts of the one-at-a-time rows
    streams: int  # the many-stream level (and HF's static batch size)
    recompute_streams: int  # blind-recompute's many-stream level: it re-runs the whole context every token
    output_len: int


# Every row runs the same prompts by default (serial_prompts = num_prompts), so rows compare like with like;
# --serial-prompts N runs the one-at-a-time rows on the first N only, for a shorter run.
DEFAULT = Sizes(num_prompts=32, serial_prompts=32, streams=32, recompute_streams=4, output_len=64)
QUICK = Sizes(num_prompts=8, serial_prompts=8, streams=8, recompute_streams=2, output_len=16)


@dataclass(frozen=True, slots=True)
class CompareOptions:
    sizes: Sizes
    quick: bool
    ignore_eos: bool
    input_len: int | None  # None: the built-in prompt set
    dtype: str  # auto | bfloat16 | float32 | float16
    threads: int  # CPU threads of every system (torch threads in-process, worker threads)
    seed: int
    systems: tuple[str, ...]
    registry_home: Path | None  # None: $GENIE_HOME, else ~/.genie
    output_dir: Path
    plot: bool
    timeout_s: float  # the most one request or step may take

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {
            "registry_home": str(self.registry_home) if self.registry_home else None,
            "output_dir": str(self.output_dir),
            "systems": list(self.systems),
        }


SIZE_HELP = {
    "num_prompts": "prompts of the many-stream rows",
    "serial_prompts": "prompts of the one-at-a-time rows",
    "streams": "the many-stream level, and HF's static batch size",
    "recompute_streams": "blind-recompute's many-stream level",
    "output_len": "tokens to generate per request",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sizes = p.add_argument_group("sizes (defaults: full run / --quick)")
    for name, text in SIZE_HELP.items():
        defaults = f"{getattr(DEFAULT, name)} / {getattr(QUICK, name)}"
        sizes.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{text} ({defaults})")
    p.add_argument("--quick", action="store_true", help="a small run of about 3 minutes")
    p.add_argument("--ignore-eos", action="store_true", help="every request generates exactly --output-len tokens")
    p.add_argument("--input-len", type=int, help="synthetic prompts of about N tokens instead of the built-in set")
    p.add_argument("--dtype", default="auto", help="compute dtype of every system: auto (bfloat16 where native), "
                   "bfloat16, float32, float16 (default auto)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads of every system (default: all cores)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"which systems to run (default {','.join(SYSTEMS)})")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompt order (default 0)")
    p.add_argument("--registry-home", type=Path, help="genie registry home (default $GENIE_HOME, else ~/.genie)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one request or step may take (default 900)")
    p.add_argument("--output", type=Path, help="directory for results (default benchmarks/results/)")
    p.add_argument("--plot", action="store_true", help="also draw a PNG next to the results JSON")


def _positive(flag: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value}")
    return value


def _sizes(args: argparse.Namespace) -> Sizes:
    base = asdict(QUICK if args.quick else DEFAULT)
    given = {name: getattr(args, name) for name in base if getattr(args, name) is not None}
    sizes = Sizes(**(base | given))
    for name, value in asdict(sizes).items():
        _positive(f"--{name.replace('_', '-')}", value)
    if sizes.num_prompts < sizes.streams:
        raise ValueError(f"--num-prompts ({sizes.num_prompts}) must be at least --streams ({sizes.streams}) to keep "
                         "that many requests in flight")
    if sizes.serial_prompts > sizes.num_prompts:
        raise ValueError(
            f"--serial-prompts ({sizes.serial_prompts}) must not exceed --num-prompts ({sizes.num_prompts})"
        )
    if sizes.recompute_streams > sizes.num_prompts:
        raise ValueError(f"--recompute-streams ({sizes.recompute_streams}) must not exceed --num-prompts "
                         f"({sizes.num_prompts})")
    return sizes


def parse_systems(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in SYSTEMS]
    if not names or unknown:
        raise ValueError(f"--systems takes a comma-separated subset of {','.join(SYSTEMS)}, got {text!r}")
    return tuple(n for n in SYSTEMS if n in names)


def compare_options(args: argparse.Namespace, output_dir: Path) -> CompareOptions:
    """Checks the flags together; raises ValueError naming the flag and what would be right."""
    if args.input_len is not None:
        _positive("--input-len", args.input_len)
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    return CompareOptions(
        sizes=_sizes(args),
        quick=args.quick,
        ignore_eos=args.ignore_eos,
        input_len=args.input_len,
        dtype=args.dtype,
        threads=_positive("--threads", args.threads),
        seed=args.seed,
        systems=parse_systems(args.systems),
        registry_home=args.registry_home,
        output_dir=output_dir,
        plot=args.plot,
        timeout_s=args.timeout,
    )
