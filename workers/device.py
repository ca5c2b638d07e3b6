"""Device facts a worker reports in Info: name, memory, and a quick measurement of its speed.

The planner reads bandwidth (decode is memory-bound) and matmul TFLOP/s (prefill is compute-bound) from
here, so they are measured on the real device at start-up, in about 0.6 s (one worker of a host at a time).
Small models are paced by neither: each op and each module call costs a fixed few microseconds of dispatch, so
that is measured too. So is
what a call pays once when it follows a pause, as served calls do (they come 1-3 ms apart): the caches, branch
predictors and allocator state a forward leaves warm go cold in between, and the next forward pays to warm them
again, whatever its size (`call_us`, from a generic layer stack run after pauses and back to back).
"""

from __future__ import annotations

import fcntl
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Big enough to leave the caches and hide launch overheads, small enough to finish in a few ms.
BANDWIDTH_BYTES = {"cpu": 32 << 20, "cuda": 512 << 20}
# A CPU core reaches its peak at 512 already; the smaller size gives about 20 runs in the budget rather than 3,
# so the fastest is one that no other job's burst slowed (another thread on the core halves a matmul).
MATMUL_SIZE = {"cpu": 512, "cuda": 4096}
BUDGET_S = 0.1  # per measurement
PROBE_LOCK = "genie-device-probe.lock"  # in the temp folder: the host's workers take turns to probe
TURN_WAIT_S = 5.0  # the longest a worker waits for its turn before it probes anyway


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
    call_us: float = 0.0  # microseconds a forward pays once when it follows a pause (cold start of a call)


def probe_device(device: torch.device, dtype: torch.dtype) -> DeviceFacts:
    """Measures the device once; takes well under a second, plus the wait for the host's other workers' probes."""
    with _probe_turn():
        return _probe(device, dtype)


@contextmanager
def _probe_turn(wait_s: float = TURN_WAIT_S) -> Iterator[None]:
    """Workers on one host probe one at a time (an advisory lock on a file in the temp folder): workers start
    together, and two matmul probes on one core's two hardware threads each measure half its speed. After
    `wait_s` a worker probes anyway; the lock goes with the process that holds it."""
    try:
        fd = os.open(os.path.join(tempfile.gettempdir(), PROBE_LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)  # another worker is probing: wait for its turn to end
            except OSError:  # no locks on this file system: probe without a turn
                break
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _probe(device: torch.device, dtype: torch.dtype) -> DeviceFacts:
    total, free = memory_bytes(device)
    first_tflops = measure_tflops(device, dtype)
    bandwidth = measure_bandwidth(device)
    op_us, module_us, call_us = measure_op_us(device, dtype), measure_module_us(device), measure_call_us(device, dtype)
    # The matmul once more, half a second on: a burst of another job on the core's other hardware thread halves
    # a matmul, and the faster of two windows apart is less likely to have met one.
    tflops = max(first_tflops, measure_tflops(device, dtype))
    return DeviceFacts(
        device=str(device),
        name=device_name(device),
        memory_total_bytes=total,
        memory_free_bytes=free,
        bandwidth_gbps=bandwidth,
        tflops=tflops,
        dtype=str(dtype).removeprefix("torch."),
        capabilities=capabilities(device),
        op_us=op_us,
        module_us=module_us,
        call_us=call_us,
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


GAP_S = 0.002  # the pause before each run of the call probe: what a worker sees between served calls
CALL_RUNS = 40  # timed runs of the probe stack after pauses: about 40 x (2 ms + a run), about 0.1 s
CALL_QUANTILE = 0.1  # which of them: a low one, as the probes keep best runs, but not the luckiest
PROBE_WIDTH, PROBE_TOKENS, PROBE_BATCH, PROBE_DEPTH = 16, 8, 8, 2


class ProbeLayer(torch.nn.Module):
    """A transformer layer at toy width from stock modules, arithmetic too small to count: the ops and module
    calls a small fragment is made of (attention, residuals, norms, an MLP): 17 tensor ops and 7 module calls
    as the analyser counts them (tests/workers/test_device_call_probe.py holds it to that)."""

    def __init__(self, width: int = PROBE_WIDTH) -> None:
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.up, self.down = torch.nn.Linear(width, 2 * width), torch.nn.Linear(2 * width, width)
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [batch, tokens, width]
        q, k, v = self.qkv(x).chunk(3, -1)
        a = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        x = self.norm1(x + self.out(a))
        return self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))


class ProbeStack(torch.nn.Module):
    def __init__(self, depth: int = PROBE_DEPTH) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(ProbeLayer() for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def measure_call_us(device: torch.device, dtype: torch.dtype) -> float:
    """What a forward pays once when it follows a pause: the probe stack's run after a pause of GAP_S (the
    CALL_QUANTILE one of CALL_RUNS), less its fastest run back to back (what the op and module probes price), in
    microseconds, never below 0. A low quantile, as every probe here keeps its best runs (the jobs starting
    beside a worker push the median up by 2x), but not the fastest: now and then a paused run finds its caches
    intact, which a served call, following the worker's own gRPC and codec work, hardly ever does."""
    torch.manual_seed(0)
    stack = ProbeStack().to(device=device, dtype=dtype).eval()
    x = torch.randn(PROBE_BATCH, PROBE_TOKENS, PROBE_WIDTH, device=device).to(dtype)
    with torch.no_grad():
        warm = _best_time(lambda: stack(x), device)
        cold = _paused_time(lambda: stack(x), device)
    return max(cold - warm, 0.0) * 1e6


def _paused_time(op: Callable[[], object], device: torch.device) -> float:
    """The CALL_QUANTILE wall time of `op` over CALL_RUNS runs, each after a pause of GAP_S (the thread sleeps,
    as a worker's engine thread idles between calls; the pause is the condition measured, not a stand-in for
    work)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    op()
    sync()
    times = []
    for _ in range(CALL_RUNS):
        time.sleep(GAP_S)
        start = time.perf_counter()
        op()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[int(len(times) * CALL_QUANTILE)]


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
