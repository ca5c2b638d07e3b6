"""The plans genie-serve runs: a strategy pinned on a model entry, planned or refused at start; and
`GET /v1/genie/plans`, each served model's plan with its predictions beside what serving measured."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from genie.config import ModelConfig, Strategy
from genie.errors import ConfigError, GenieError
from genie.semantic import ClusterSpec, Plan, PlanFragment, PlanOptions, Transfer, plan
from genie.semantic.cluster import Measured, calibrated
from genie.semantic.planner import recost
from genie.semantic.profile import Profile
from genie.workers.client import WorkerClient
from genie.workers.codec import WorkerStats
from genie.workers.contract import FragmentInfo

from .stateless.meters import Meters

log = logging.getLogger("genie.serve")
PLANNED = PlanOptions()  # the traffic plans are made for: predictions are at its batch


def pin_plan(model: ModelConfig, profile: Profile, cluster: ClusterSpec, cached: Plan) -> Plan:
    """The cached plan, unless the entry pins another strategy: then that strategy planned now (planning is
    pure and takes milliseconds), or a ConfigError that says why it cannot be."""
    pinned = model.strategy.value
    if model.strategy is Strategy.AUTO or cached.strategy == pinned:
        return cached
    try:
        pinned_plan = plan(profile, cluster, PlanOptions(strategy=pinned))
        log.info("model %s: strategy %s pinned: %s", model.name, pinned, pinned_plan.summary())
        return pinned_plan
    except ValueError as exc:
        raise ConfigError(f"model {model.name!r}: {exc} (strategy: auto lets the planner choose)") from None


async def measured_speeds(clients: dict[str, WorkerClient], names: list[str], timeout: float) -> dict[str, Measured]:
    """What each worker measured of its device at start-up (its Info), for calibration; never the meters."""
    infos = await asyncio.gather(*(clients[n].info(timeout=timeout) for n in names))
    return {n: Measured(i.tflops * 1e12, i.bandwidth_gbps * 1e9, i.op_us * 1e-6, i.module_us * 1e-6,
                        i.call_us * 1e-6)
            for n, i in zip(names, infos, strict=True) if i.tflops > 0 and i.bandwidth_gbps > 0}


@dataclass(slots=True)
class PlanReport:
    """One served stateless model's plan, its predictions (nominal and calibrated on the workers' measured
    speed) and what serving measured since `begin` (the executor's meters, the workers' Stats counters)."""

    name: str
    plan: Plan
    profile: Profile
    meters: Meters
    clients: dict[str, WorkerClient]  # name -> client, the pool's own (live: a restarted worker's new client)
    loaded: dict[str, FragmentInfo]  # fragment_id -> what its worker reported at load (weights, inputs)
    nominal: ClusterSpec
    calibrated: ClusterSpec | None = None
    baseline: dict[str, WorkerStats] = field(default_factory=dict)
    logged: str | None = None  # the better strategy last logged, so the log says it once
    mode: str = "report"  # serving.replan: off | report | auto
    switches: list[dict[str, Any]] = field(default_factory=list)  # re-plans applied (serving.replan: auto)

    @property
    def workers(self) -> list[str]:
        return sorted({f.worker for f in self.plan.fragments})

    async def begin(self, timeout: float) -> None:
        """Calibrates from each worker's Info and starts measuring now (after warm-up and probes)."""
        self.calibrated = calibrated(self.nominal, await measured_speeds(self.clients, self.workers, timeout))
        self.meters.clear()
        self.baseline = await self._stats(timeout)

    async def adopt(self, plan: Plan, meters: Meters, loaded: dict[str, FragmentInfo], timeout: float) -> None:
        """A re-planned model's new plan, measured from now on (its warm-up calls are not counted)."""
        before = self.plan, self.meters, self.loaded, self.logged
        self.plan, self.meters, self.loaded, self.logged = plan, meters, loaded, None
        try:
            await self.begin(timeout)
        except BaseException:  # a worker did not answer: the running plan stays the one reported
            self.plan, self.meters, self.loaded, self.logged = before
            raise

    async def _stats(self, timeout: float) -> dict[str, WorkerStats]:
        names = self.workers
        stats = await asyncio.gather(*(self.clients[n].stats(timeout=timeout) for n in names))
        return dict(zip(names, stats, strict=True))

    async def to_dict(self, timeout: float = 5.0) -> dict[str, Any]:
        try:
            now = await self._stats(timeout)
        except GenieError:
            now = {}  # a worker down: the executor's own meters still say what crossed
        frags = [self._fragment(f, now) for f in self.plan.fragments]
        return {
            "model": self.name, "strategy": self.plan.strategy, "reasons": self.plan.reasons,
            "planned_batch": PLANNED.batch, "calibration": self._calibration(),
            "fragments": frags, "links": [self._link(t, now) for t in self.plan.transfers],
            "replan": self.replan(),
        }

    def verdict(self, min_calls: int = 1) -> recost.Replan | None:
        """The plan re-costed on the measured step times, once every fragment ran `min_calls` calls at its most
        common batch; None before."""
        measured = {}
        for f in self.plan.fragments:
            meter = self.meters.get(f.fragment_id)
            if not meter or not meter.by_batch:
                return None
            common = max(meter.by_batch, key=lambda b: meter.by_batch[b][0])
            if meter.by_batch[common][0] < min_calls:
                return None
            measured[f.fragment_id] = (common, meter.fastest_step_s(common))
        return recost.replan(self.profile, self.calibrated or self.nominal, self.plan, measured, PLANNED)

    def replan(self) -> dict[str, Any] | None:
        """The re-costing for GET /v1/genie/plans, logged when another strategy wins clearly; with
        serving.replan: auto the Replanner (stateless/replan.py) applies it, and `switches` lists what it did."""
        done = {"mode": self.mode, "applied": bool(self.switches), "switches": self.switches}
        if self.mode == "off":
            return done | {"note": "serving.replan is off: the plan is not re-costed"}
        verdict = self.verdict()
        if verdict is None:
            return None if not self.switches else done
        if verdict.mispredicted and verdict.better and verdict.better != self.logged:
            then = ("serving.replan: auto applies it at the next drain point" if self.mode == "auto" else
                    "re-planning is reported, not applied; serving.replan: auto applies it")
            log.warning("model %s: measured step times are %s the predictions; re-costed on them, %s promises "
                        "%.0f requests/s against %.0f for the running %s (%s)",
                        self.name, ", ".join(f"{w} {r:.2f}x" for w, r in sorted(verdict.mismatch.items())),
                        verdict.better, verdict.candidates[verdict.better],
                        verdict.candidates.get(verdict.current, 0.0), verdict.current, then)
            self.logged = verdict.better
        return {"mismatch": verdict.mismatch, "mispredicted": verdict.mispredicted,
                "threshold": recost.MISPREDICTED, "clear_win": recost.CLEAR_WIN,
                "candidates_requests_per_s": verdict.candidates, "refused": verdict.refused,
                "better_strategy": verdict.better if verdict.mispredicted else None, **done}

    def _calibration(self) -> dict[str, Any]:
        out = {}
        for w in self.nominal.workers:
            if w.name in self.workers:
                c = self.calibrated.worker(w.name) if self.calibrated else w
                out[w.name] = {"nominal_flops": w.flops, "nominal_bandwidth": w.bandwidth,
                               "measured_flops": c.flops, "measured_bandwidth": c.bandwidth,
                               "measured_op_s": c.op_s, "measured_module_s": c.module_s,
                               "measured_call_s": c.call_s}
        return out

    def _fragment(self, f: PlanFragment, now: dict[str, WorkerStats]) -> dict[str, Any]:
        meter = self.meters.get(f.fragment_id)
        rows = meter.rows if meter else 0
        common = max(meter.by_batch, key=lambda b: meter.by_batch[b][0]) if meter and meter.by_batch else None
        cluster = self.calibrated or self.nominal
        predicted = {
            "step_s": recost.step_time(self.profile, self.nominal, f, PLANNED.batch),
            "step_s_calibrated": recost.step_time(self.profile, cluster, f, PLANNED.batch),
            "input_bytes_per_request": self._input_bytes(f),
            "param_bytes": f.param_bytes, "memory_bytes": f.memory_bytes,
        }
        measured = {
            "step_s_at_planned_batch": meter.step_s(PLANNED.batch) if meter else None,
            "most_common_batch": common,
            "step_s_at_most_common_batch": meter.step_s(common) if common else None,
            "median_step_s_at_most_common_batch": meter.median_step_s(common) if common else None,
            "fastest_step_s_at_most_common_batch": meter.fastest_step_s(common) if common else None,
            "median_call_s_at_most_common_batch": meter.median_call_s(common) if common else None,
            "predicted_step_s_calibrated_at_that_batch":
                recost.step_time(self.profile, cluster, f, common) if common else None,
            "predicted_parts_at_that_batch": recost.step_parts(self.profile, cluster, f, common) if common else None,
            "weight_bytes": self.loaded[f.fragment_id].weight_bytes if f.fragment_id in self.loaded else None,
            **(meter.to_dict() if meter else {}),
            **self._worker_bytes(f.worker, rows, now),
        }
        return {"fragment_id": f.fragment_id, "worker": f.worker, "role": f.role, "reason": f.reason,
                "predicted": predicted, "measured": measured}

    def _input_bytes(self, f: PlanFragment) -> int:
        """What a request brings to the fragment: the model inputs it reads (at the profile's shapes), plus what
        the plan's links bring it from other fragments."""
        info = self.loaded.get(f.fragment_id)
        reads = {s.name for s in info.inputs} if info else None
        incoming = sum(t.bytes_per_request for t in self.plan.transfers if t.dst == f.fragment_id)
        return recost.input_bytes(self.profile, reads) + incoming

    def _worker_bytes(self, worker: str, rows: int, now: dict[str, WorkerStats]) -> dict[str, Any]:
        """The worker's own counters (serialized Infer messages, every fragment on it) per request since begin."""
        if not rows or worker not in now or worker not in self.baseline:
            return {}
        then, cur = self.baseline[worker], now[worker]
        return {"worker_bytes_received_per_request": (cur.bytes_received - then.bytes_received) / rows,
                "worker_bytes_sent_per_request": (cur.bytes_sent - then.bytes_sent) / rows}

    def _link(self, t: Transfer, now: dict[str, WorkerStats]) -> dict[str, Any]:
        """A plan link, measured where it leaves its source: the payload the executor got back, and the source
        worker's sent counter (protobuf framing included); beside them what shipping the tables would move."""
        src = next(f for f in self.plan.fragments if f.fragment_id == t.src)
        meter = self.meters.get(t.src)
        payload = meter.got_bytes / meter.rows if meter and meter.rows else None
        framed = self._worker_bytes(src.worker, meter.rows if meter else 0, now).get("worker_bytes_sent_per_request")
        out = {"src": t.src, "dst": t.dst, "what": t.what, "predicted_bytes_per_request": t.bytes_per_request,
               "measured_payload_bytes_per_request": payload, "measured_worker_bytes_per_request": framed,
               "relative_error": (framed - t.bytes_per_request) / t.bytes_per_request
               if framed is not None and t.bytes_per_request else None}
        if src.role == "sparse":
            out["shipping_the_tables_bytes"] = src.param_bytes
        return out


async def list_plans(request: web.Request) -> web.Response:
    """GET /v1/genie/plans: every served model's plan, predicted beside measured."""
    from .http import STATE  # http.py imports this module for its route list

    data = []
    for entry in request.app[STATE].catalog.entries.values():
        report = getattr(entry.service, "plan_report", None)
        if report is None:
            data.append({"model": entry.name, "kind": entry.kind, "error": "this model's plan report is not "
                         "wired (it started without one)"})
        else:
            data.append(await report.to_dict())
    return web.json_response({"object": "list", "data": data})
