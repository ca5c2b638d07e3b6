"""The cluster a config describes, as the planner sees it.

Plans are cached by the cluster's fingerprint, so everything here must come out the same on every start
of the same config on the same machine: memory comes from the config or the machine's totals, compute and
bandwidth are nominal figures per device kind, never start-up measurements.
"""

from __future__ import annotations

import math
import os

from genie.config import GenieConfig, Launcher, WorkersConfig
from genie.semantic import ClusterSpec, WorkerSpec

# Nominal peak figures per device kind (FLOP/s, bytes/s). They rank placements; they do not predict wall time.
NOMINAL = {
    "cpu": (1.0e11, 2.0e10),  # a few AVX2/AVX-512 cores, dual-channel DDR4/5
    "cuda": (5.0e13, 1.0e12),  # a data-centre GPU at fp16/bf16
}


def cluster_from_config(cfg: GenieConfig) -> ClusterSpec:
    """One WorkerSpec per worker: ``worker-0``... for launched ones, then one named by each address.

    With `workers.launcher: ray` the cluster's own resources decide: CUDA when it has GPUs (device auto), and
    memory per worker from its nodes' `memory` (unless workers.memory_mib is set)."""
    workers_cfg = cfg.workers
    if workers_cfg.launcher == Launcher.RAY:
        device, memory = _ray_worker(workers_cfg)
    else:
        device = resolve_device(workers_cfg.device)
        memory = worker_memory_bytes(workers_cfg, device)
    flops, bandwidth = NOMINAL[device_kind(device)]
    names = [f"worker-{i}" for i in range(workers_cfg.launch)] + list(workers_cfg.addresses)
    workers = tuple(WorkerSpec(n, device, memory, flops, bandwidth) for n in names)
    return ClusterSpec(workers=workers, link_bandwidth=workers_cfg.link_gbps * 1e9 / 8)


def _ray_worker(workers_cfg: WorkersConfig) -> tuple[str, int]:
    from . import ray_capacity

    ray_capacity.connect(workers_cfg.ray_address, workers_cfg.ray_namespace)
    capacity = ray_capacity.nodes()
    device = workers_cfg.device
    if device == "auto":
        device = "cuda" if any(n.gpus > 0 for n in capacity) else "cpu"
    if workers_cfg.memory_mib is not None:
        return device, workers_cfg.memory_mib * 2**20
    if device_kind(device) == "cuda":  # Ray counts GPUs, not their memory: plan with this machine's GPUs
        return device, worker_memory_bytes(workers_cfg, device)
    return device, ray_capacity.worker_memory(capacity, workers_cfg.count)


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' where torch sees a GPU, else 'cpu'; explicit devices stay as written."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_kind(device: str) -> str:
    return device.split(":", 1)[0]


def worker_memory_bytes(workers_cfg: WorkersConfig, device: str) -> int:
    """memory_mib when set; else the device's total shared evenly by the workers on it."""
    if workers_cfg.memory_mib is not None:
        return workers_cfg.memory_mib * 2**20
    if device_kind(device) == "cpu":
        return _total_ram() // workers_cfg.count
    return _gpu_share(device, workers_cfg.count)


def _total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gpu_share(device: str, count: int) -> int:
    import torch

    if not torch.cuda.is_available():
        return _total_ram() // count  # planning for a GPU config on a machine without one
    if ":" in device:
        return torch.cuda.get_device_properties(int(device.split(":")[1])).total_memory // count
    gpus = torch.cuda.device_count()
    smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
    return smallest // math.ceil(count / gpus)
