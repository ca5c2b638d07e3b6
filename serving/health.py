"""`GET /health`: the state of every model and replica, for operators and load balancers.

A replica is `ready` (serving), `starting` (loaded, not yet warmed), `restarting` (failed, being brought back)
or `down` (failed, not coming back: restarts are off). A model is `ready` when every replica is, `degraded`
while at least one serves, `down` when none does. `/health/ready` says 200 exactly while no model is down.
"""

from __future__ import annotations

from typing import Any

from .replica import Replica
from .router import Router


def replica_state(replica: Replica, restarting: set[str]) -> str:
    if replica.alive:
        return "ready" if replica.warm else "starting"
    return "restarting" if replica.name in restarting else "down"


def health_report(router: Router, model: str, restarting: set[str]) -> dict[str, Any]:
    replicas = []
    for replica in sorted(router.replicas.values(), key=lambda r: r.name):
        entry: dict[str, Any] = {
            "name": replica.name,
            "state": replica_state(replica, restarting),
            "workers": [{"name": s.worker, "address": s.client.address} for s in replica.stages],
        }
        if not replica.alive:
            entry["failure"] = replica.failure
        replicas.append(entry)
    states = {r["state"] for r in replicas}
    if states == {"ready"}:
        model_state = "ready"
    elif "ready" in states:
        model_state = "degraded"
    else:
        model_state = "down"
    status = "ready" if router.ready else ("shutting down" if not router.accepting else "down")
    return {"status": status, "models": [{"name": model, "state": model_state, "replicas": replicas}]}
