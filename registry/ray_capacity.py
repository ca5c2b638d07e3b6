"""What a Ray cluster offers the planner (`workers.launcher: ray`), and this process's one connection to it.

`connect` runs once per process (genie-serve, or `genie-models` planning for a Ray config): `auto` joins the
cluster `ray start` made on this machine, `local` starts a head inside this process, anything else is the
cluster's address. `ray` is imported here and only here on the registry side, when a Ray config is used.

Plans are cached by the cluster's fingerprint, and Ray's `memory` resource moves by a few MiB between starts
(it is a share of the memory free when the node started), so memory is rounded down to whole GiB.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from genie.errors import ConfigError, Unavailable

log = logging.getLogger("genie.ray")

GiB = 1 << 30
_lock = threading.Lock()
_started_head = False


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    node_id: str
    address: str  # the node's IP, as Ray knows it
    cpus: float
    gpus: float
    memory_bytes: int  # Ray's `memory` resource: what actors may reserve there


def import_ray():
    # SIGTERM is how genie-serve is told to drain; Ray's crash handler would print it as a fatal stack trace.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        import ray
    except ImportError:
        raise ConfigError("workers.launcher is ray but the ray package is not installed; install it with "
                          "pip install 'genie-serve[ray]'") from None
    return ray


def connect(address: str, namespace: str | None = None) -> bool:
    """Joins the Ray cluster at `address` (auto | local | HOST:PORT | ray://HOST:PORT) unless this process is
    connected already; returns True when this process started the head itself (`local`)."""
    global _started_head
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            return _started_head
        kwargs = {"namespace": namespace, "log_to_driver": True}
        if address == "local":
            # The dashboard process serves ray.util.state (`ray list actors`); it listens on loopback only.
            kwargs |= {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": 0}
        else:
            kwargs["address"] = address
        began = time.monotonic()
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise Unavailable(f"cannot connect to the Ray cluster at workers.ray_address {address!r}: "
                              f"{str(exc).strip().rstrip('.')}; "
                              "start one with `ray start --head`, or set ray_address: local") from None
        _started_head = address == "local"
        log.info("connected to the Ray cluster at %s (%s) in %.1f s", address,
                 "a head started here" if _started_head else ray.get_runtime_context().gcs_address,
                 time.monotonic() - began)
        return _started_head


def disconnect() -> None:
    global _started_head
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            ray.shutdown()
        _started_head = False


def nodes() -> list[NodeCapacity]:
    """The cluster's alive nodes and their resources; needs `connect` first."""
    ray = import_ray()
    out = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        out.append(NodeCapacity(node["NodeID"], node.get("NodeManagerAddress", ""), float(res.get("CPU", 0)),
                                float(res.get("GPU", 0)), int(res.get("memory", 0))))
    if not out:
        raise Unavailable("the Ray cluster has no alive node; start one with `ray start`")
    return out


def worker_memory(capacity: list[NodeCapacity], count: int) -> int:
    """Memory per worker actor for planning: the cluster's memory shared by `count` workers, never more than
    the largest node holds, in whole GiB (at least 1)."""
    total = sum(n.memory_bytes for n in capacity)
    share = min(total // max(1, count), max(n.memory_bytes for n in capacity))
    return max(GiB, share // GiB * GiB)
