"""`GET /health`: the state of every model and replica, for operators and load balancers.

A replica is `ready` (serving), `starting` (loaded, not yet warmed), `restarting` (failed, being brought back)
or `down` (failed, not coming back: restarts are off). A model is `ready` when every replica is, `degraded`
while at least one serves, `down` when none does, `waiting` while the config names it but it is not loaded yet
(not registered when genie-serve started; `reason` says why). `/health/ready` says 200 exactly while every
loaded model has a replica that serves: a model still waiting for its registration does not take the server
out of a load balancer's rotation, but /health answers 503 (`degraded`) until it serves.
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog, LLMEntry
from .replica import Replica


def replica_state(replica: Replica, restarting: set[str]) -> str:
    if replica.alive:
        return "ready" if replica.warm else "starting"
    return "restarting" if replica.name in restarting else "down"


def _model_report(name: str, kind: str, replicas_of: dict[str, Replica], restarting: set[str]) -> dict[str, Any]:
    replicas = []
    for replica in sorted(replicas_of.values(), key=lambda r: r.name):
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
    return {"name": name, "kind": kind, "state": model_state, "replicas": replicas}


def health_report(catalog: Catalog) -> dict[str, Any]:
    entries = list(catalog.entries.values())
    models = [_model_report(e.name, e.kind, e.service.replicas, e.restarting) for e in entries]
    models += [{"name": name, "kind": None, "state": "waiting", "reason": why, "replicas": []}
               for name, why in sorted(catalog.waiting.items())]
    if not all(e.service.accepting for e in entries):
        status = "shutting down"
    elif all(e.service.ready for e in entries):
        status = "degraded" if catalog.waiting else "ready"
    else:
        status = "down"
    return {"status": status, "models": models}


def model_cards(catalog: Catalog) -> list[dict[str, Any]]:
    """`GET /v1/models`: every served model, with the kind of endpoint it answers."""
    cards = []
    for entry in catalog.entries.values():
        if isinstance(entry, LLMEntry):
            card = {"id": entry.name, "object": "model", "created": entry.model.created, "owned_by": "genie-serve",
                    "max_model_len": entry.model.max_context, "kind": "llm"}
        else:
            card = {"id": entry.name, "object": "model", "created": entry.created, "owned_by": "genie-serve",
                    "kind": entry.kind}
            if entry.max_tokens:
                card["max_model_len"] = entry.max_tokens
            if entry.dimensions:
                card["dimensions"] = entry.dimensions
        cards.append(card)
    return cards
