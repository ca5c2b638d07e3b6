"""Device facts a worker reports in Info: name, memory, and a quick measurement of its speed.

The planner reads bandwidth (decode is memory-bound) and matmul TFLOP/s (prefill is compute-bound) from
here, so they are measured on the real device at start-up, within about half a second. Small models are paced by
neither: each op and each module call costs a fixed few microseconds of dispatch, so that is measured too.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Big enough to leave the caches and hide launch overheads, small enough to finish in a few ms.
BANDWIDTH_BYTES = {"cpu": 32 << 20, "cuda": 512 << 20}
MATMUL_SIZE = {"cpu": 1024, "cuda": 4096}
BUDGET_S = 0.1  # per measurement


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    device: str  # "cpu", "cuda:0"
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    bandwidth_gbps: float  # GB/s of a large tensor copy, counting bytes read + written
    tflops: float  # matmul TFLOP/s in `dtype`
    dtype: str  # the default compute dtype the measurement used
    capabilities: tuple[str, ...]
    op_us: float = 0.0  # microseconds of dispatch per tensor op called from Python (tiny tensors, no real work)
    module_us: float = 0.0  # microseconds of one nn.Module call around its forward


def probe_device(device: torch.device, dtype: torch.dtype) -> DeviceFacts:
    """Measures the device once; takes well under a second."""
    total, free = memory_bytes(device)
    return DeviceFacts(
        device=str(device),
        name=device_name(device),
        memory_total_bytes=total,
        memory_free_bytes=free,
        bandwidth_gbps=measure_bandwidth(device),
        tflops=measure_tflops(device, dtype),
        dtype=str(dtype).removeprefix("torch."),
        capabilities=capabilities(device),
        op_us=measure_op_us(device, dtype),
        module_us=measure_module_us(device),
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def memory_bytes(device: torch.device) -> tuple[int, int]:
    """(total, free) bytes of the device's memory; for the CPU, free is what the OS says is available."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total, free
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, _available_ram() or total


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file speaks kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def capabilities(device: torch.device) -> tuple[str, ...]:
    caps = ["llm.decoder", "paged_kv", "stateless", "stateless.pooling", f"device.{device.type}", "dtype.float32",
            "dtype.float16"]
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        caps.append("dtype.bfloat16")
    return tuple(caps)


def measure_bandwidth(device: torch.device) -> float:
    size = BANDWIDTH_BYTES.get(device.type, BANDWIDTH_BYTES["cpu"])
    src = torch.ones(size, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)
    best = _best_time(lambda: dst.copy_(src), device)
    return 2 * size / best / 1e9  # a copy reads and writes every byte


def measure_tflops(device: torch.device, dtype: torch.dtype) -> float:
    n = MATMUL_SIZE.get(device.type, MATMUL_SIZE["cpu"])
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = _best_time(lambda: torch.matmul(a, b), device)
    return 2 * n**3 / best / 1e12


class _Pass(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Calls(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.inner = torch.nn.ModuleList(_Pass() for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.inner:
            x = m(x)
        return x


DISPATCH_CHAIN = 16  # repeats of the op mix (8 ops) or of a module call, per timed run


def measure_op_us(device: torch.device, dtype: torch.dtype) -> float:
    """Per-op dispatch: a chain of a layer's usual tiny ops (linear, layer norm, GELU, add, view, transpose,
    reshape, softmax) on [8, 16] tensors, whose arithmetic is negligible; time per op, in microseconds."""
    x = torch.randn(8, 16, device=device).to(dtype)
    w, g = torch.randn(16, 16, device=device).to(dtype), torch.ones(16, device=device).to(dtype)

    def chain() -> torch.Tensor:
        h = x
        for _ in range(DISPATCH_CHAIN):
            y = torch.nn.functional.layer_norm(torch.nn.functional.linear(h, w), (16,), g)
            y = torch.nn.functional.gelu(y) + h
            h = y.view(8, 2, 8).transpose(0, 1).reshape(8, 16).softmax(-1)
        return h

    return _best_time(chain, device) / (8 * DISPATCH_CHAIN) * 1e6


def measure_module_us(device: torch.device) -> float:
    """The cost of an nn.Module call beyond its ops: a chain of modules whose forward returns its input."""
    calls, x = _Calls(DISPATCH_CHAIN), torch.ones(8, device=device)
    return _best_time(lambda: calls(x), device) / DISPATCH_CHAIN * 1e6


def _best_time(op: Callable[[], object], device: torch.device) -> float:
    """Best wall time of `op` after one warm-up, repeating while the budget lasts (at least twice)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    op()
    sync()
    best = float("inf")
    deadline = time.perf_counter() + BUDGET_S
    runs = 0
    while runs < 2 or (time.perf_counter() < deadline and runs < 20):
        start = time.perf_counter()
        op()
        sync()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return max(best, 1e-9)
