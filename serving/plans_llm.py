"""An LLM model's entry in GET /v1/genie/plans: per fragment (a layer range on a worker) the predicted prefill and
decode step times, calibrated on the workers' start-up probes, beside what serving measured.

What is measured today is the router's view, for the whole replica: time per output token after the first (a
decode step, plus the router's own share) and time to first token (queueing plus prefill), from the process's
Prometheus histograms; the workers' Step and token counters; and the KV handoff bytes against the profile's
prediction. The router does not yet keep each fragment's own Step compute_seconds, so a per-fragment measured
step time is not reported (`measured_step_s_per_fragment` says so)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from genie.errors import GenieError
from genie.semantic import ClusterSpec, Plan, PlanFragment
from genie.semantic.cluster import calibrated
from genie.semantic.planner.llm_costs import LLMCosts, Stage
from genie.semantic.profile import Profile
from genie.workers.client import WorkerClient
from genie.workers.codec import WorkerStats

from .metrics import Metrics
from .plans import PLANNED, measured_speeds

NOT_KEPT = "not kept yet: the router does not record each fragment's Step compute_seconds"


@dataclass(slots=True)
class LLMPlanReport:
    name: str
    plan: Plan
    profile: Profile
    metrics: Metrics
    clients: dict[str, WorkerClient]
    nominal: ClusterSpec
    calibrated: ClusterSpec | None = None
    baseline: dict[str, WorkerStats] = field(default_factory=dict)
    counted: dict[str, float] = field(default_factory=dict)  # metric sample -> its value at begin

    @property
    def workers(self) -> list[str]:
        return sorted({f.worker for f in self.plan.fragments})

    async def begin(self, timeout: float) -> None:
        """Calibrates from the workers' Info and starts counting now (after warm-up)."""
        self.calibrated = calibrated(self.nominal, await measured_speeds(self.clients, self.workers, timeout))
        self.counted = {k: self._sample(k) for k in _SAMPLES}
        self.baseline = await self._stats(timeout)

    async def _stats(self, timeout: float) -> dict[str, WorkerStats]:
        stats = await asyncio.gather(*(self.clients[n].stats(timeout=timeout) for n in self.workers))
        return dict(zip(self.workers, stats, strict=True))

    def _sample(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    def _since(self, name: str) -> float:
        return self._sample(name) - self.counted.get(name, 0.0)

    async def to_dict(self, timeout: float = 5.0) -> dict[str, Any]:
        try:
            now = await self._stats(timeout)
        except GenieError:
            now = {}
        try:
            costs = LLMCosts(self.profile, PLANNED)
        except ValueError as exc:  # a profile without the decoder structure the LLM cost model reads
            return {"model": self.name, "strategy": self.plan.strategy, "error": str(exc)}
        first = self._since("genie_time_to_first_token_seconds_count")
        prompt = round(self._since("genie_prompt_tokens_total") / first) if first else None
        return {
            "model": self.name, "strategy": self.plan.strategy, "reasons": self.plan.reasons,
            "planned_batch": PLANNED.batch, "planned_prompt_tokens": PLANNED.prompt_tokens,
            "measured_mean_prompt_tokens": prompt,
            "fragments": [self._fragment(costs, f, now, prompt) for f in self.plan.fragments],
            "measured": self._measured(), "links": self._links(),
        }

    def _fragment(self, costs: LLMCosts, f: PlanFragment, now: dict[str, WorkerStats],
                  prompt: int | None) -> dict[str, Any]:
        context = PLANNED.prompt_tokens + PLANNED.output_tokens // 2
        predicted = {}
        for label, cluster in (("", self.nominal), ("_calibrated", self.calibrated or self.nominal)):
            stage = Stage(cluster.worker(f.worker), f.layer_start or 0, f.layer_end or costs.num_layers,
                          f.has_embedding, f.has_head)
            predicted |= {f"prefill_s{label}": costs.prefill_time(stage, PLANNED.prompt_tokens),
                          f"decode_step_s_batch_1{label}": costs.decode_time(stage, 1, context),
                          f"decode_step_s{label}": costs.decode_time(stage, PLANNED.batch, context)}
            if prompt:  # the prompts served: what the measured time to first token can be set against
                predicted[f"prefill_s_at_mean_prompt{label}"] = costs.prefill_time(stage, max(prompt, 1))
        measured: dict[str, Any] = {"measured_step_s_per_fragment": NOT_KEPT}
        if f.worker in now and f.worker in self.baseline:
            then, cur = self.baseline[f.worker], now[f.worker]
            measured |= {"worker_steps": cur.steps - then.steps, "worker_tokens": cur.tokens - then.tokens}
        return {"fragment_id": f.fragment_id, "worker": f.worker, "role": f.role, "reason": f.reason,
                "layers": [f.layer_start, f.layer_end], "predicted": predicted, "measured": measured}

    def _measured(self) -> dict[str, Any]:
        """The router's view of the whole model since begin (every fragment of a replica together)."""
        out = {}
        for key, metric in (("tpot_s", "genie_time_per_output_token_seconds"),
                            ("ttft_s", "genie_time_to_first_token_seconds")):
            count = self._since(f"{metric}_count")
            out[f"mean_{key}"] = self._since(f"{metric}_sum") / count if count else None
            out[f"{key}_samples"] = int(count)
        out["note"] = ("router-observed: tpot is a decode step plus the router's share of it; ttft includes "
                       "queueing; both are process-wide, so several LLM models share them")
        return out

    def _links(self) -> list[dict[str, Any]]:
        sent = self._since("genie_kv_handoff_bytes_total")
        predicted = self._since("genie_kv_handoff_predicted_bytes_total")
        links = [{"src": t.src, "dst": t.dst, "what": t.what, "predicted_bytes_per_request": t.bytes_per_request,
                  "predicted_bytes_per_token": t.bytes_per_token} for t in self.plan.transfers]
        for link in links:
            if "kv" in link["what"].lower() or self.plan.strategy == "disaggregated":
                link |= {"measured_handoff_bytes": sent, "predicted_handoff_bytes_for_those_tokens": predicted,
                         "relative_error": (sent - predicted) / predicted if predicted else None}
        return links


_SAMPLES = ("genie_time_per_output_token_seconds_sum", "genie_time_per_output_token_seconds_count",
            "genie_time_to_first_token_seconds_sum", "genie_time_to_first_token_seconds_count",
            "genie_kv_handoff_bytes_total", "genie_kv_handoff_predicted_bytes_total", "genie_prompt_tokens_total")
