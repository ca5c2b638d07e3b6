"""The machine's roofline, measured in the run: memory bandwidth, matmul TFLOP/s, and the decode speed they allow.

Decode of one token must read every weight the step uses once, so at batch 1 no system beats
read bandwidth / weight bytes per step. With B streams a step still reads the weights once but makes B tokens,
until the matmuls' FLOPs (2 per weight per token) become the limit. KV reads and attention are left out, so
the bound is optimistic: a real system stays below it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .pressure import CpuStall

STREAM_BYTES = 256 << 20  # far beyond any CPU cache
MATMUL_SIZE = 2048
REPEATS = 5
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "wpe.weight")  # read by rows, not whole


@dataclass(frozen=True, slots=True)
class Roofline:
    read_gbps: float  # GB/s of summing a large tensor: what streaming weights through the cores can reach
    copy_gbps: float  # GB/s of a large copy, counting bytes read + written (STREAM-copy style)
    tflops: float  # matmul TFLOP/s in `dtype`
    dtype: str
    weight_bytes_per_step: int  # bytes of the weights one decode step reads
    params_per_token: int  # weights a token multiplies with (2 FLOPs each)
    cpu_stall: float | None = None  # share of the measurement's time some task waited for a CPU (pressure.py)

    def decode_bound(self, streams: int) -> float:
        """Tokens/s no implementation can beat with `streams` sequences decoding together."""
        return min(self.bandwidth_bound(streams), self.compute_bound())

    def bandwidth_bound(self, streams: int) -> float:
        """Tokens/s if every step only read its weights once at the measured read bandwidth."""
        return streams * self.read_gbps * 1e9 / self.weight_bytes_per_step

    def compute_bound(self) -> float:
        """Tokens/s if every token only cost its matmuls (2 FLOPs per weight) at the measured TFLOP/s."""
        return self.tflops * 1e12 / (2 * self.params_per_token)

    def to_json(self) -> dict[str, float | int | str]:
        return {
            "read_gbps": self.read_gbps,
            "copy_gbps": self.copy_gbps,
            "tflops": self.tflops,
            "dtype": self.dtype,
            "weight_bytes_per_step": self.weight_bytes_per_step,
            "params_per_token": self.params_per_token,
            "decode_bound_batch1_tok_s": self.decode_bound(1),
            "cpu_stall": self.cpu_stall,
        }


def measure(model_dir: Path, dtype: torch.dtype) -> Roofline:
    params = params_per_token(model_dir)
    stall = CpuStall()
    read, copy, tflops = measure_read_bandwidth(), measure_copy_bandwidth(), measure_tflops(dtype)
    return Roofline(
        read_gbps=read,
        copy_gbps=copy,
        tflops=tflops,
        dtype=str(dtype).removeprefix("torch."),
        weight_bytes_per_step=params * dtype.itemsize,
        params_per_token=params,
        cpu_stall=stall.share(),
    )


def params_per_token(model_dir: Path) -> int:
    """Weights one decode step reads in full: everything but the embedding tables, plus the LM head (which is
    the token embedding itself when the model ties them)."""
    from safetensors import safe_open

    from .workload import ModelShape

    total = embeddings = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                numel = math.prod(f.get_slice(key).get_shape())
                total += numel
                embeddings += numel if key.endswith(EMBEDDING_SUFFIXES) else 0
    shape = ModelShape.read(model_dir)
    return total - embeddings + (shape.vocab * shape.hidden if shape.tied_embeddings else 0)


def measure_read_bandwidth() -> float:
    data = torch.ones(STREAM_BYTES // 4, dtype=torch.float32)  # a sum is a few adds per 64 bytes: memory-bound
    return STREAM_BYTES / _best_time(data.sum) / 1e9


def measure_copy_bandwidth() -> float:
    src = torch.ones(STREAM_BYTES, dtype=torch.uint8)
    dst = torch.zeros_like(src)
    return 2 * STREAM_BYTES / _best_time(lambda: dst.copy_(src)) / 1e9


def measure_tflops(dtype: torch.dtype) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    return 2 * MATMUL_SIZE**3 / _best_time(lambda: torch.matmul(a, b)) / 1e12


def _best_time(op: Callable[[], object]) -> float:
    op()  # warm-up: first-touch page faults, kernel selection
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - start)
    return best
