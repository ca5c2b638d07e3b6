"""`genie-models plan NAME --config F --explain`: per decision of a plan, the reason, the predicted cost, and what
a running genie-serve measured for it (its GET /v1/genie/plans), when one answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from genie.errors import InvalidRequest
from genie.semantic import ClusterSpec, Plan
from genie.semantic.planner import recost
from genie.semantic.planner.options import PlanOptions
from genie.semantic.profile import Profile

PLANNED = PlanOptions()  # genie-serve predicts at the batch plans are made for (serving/plans.PLANNED)


def served_report(url: str, model: str, api_key: str | None, timeout: float = 3.0) -> tuple[dict | None, str]:
    """The model's entry of GET {url}/v1/genie/plans, or None and why there is none."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/genie/plans")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return None, f"{url} answered HTTP {exc.code} to GET /v1/genie/plans (an API key may be needed: --api-key)"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"no genie-serve answered at {url} ({getattr(exc, 'reason', exc)})"
    for entry in body.get("data", []):
        if entry.get("model") == model:
            return entry, f"measured by the genie-serve at {url}"
    return None, f"the genie-serve at {url} does not serve {model!r}"


def check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"--url must start with http:// or https://, got {url!r}")
    return url


def explain(profile: Profile, plan: Plan, cluster: ClusterSpec, served: dict | None) -> list[dict[str, Any]]:
    """One row per decision: each fragment's placement, each link, then the plan-wide reasons."""
    measured = {f["fragment_id"]: f for f in (served or {}).get("fragments", [])}
    links = {(x["src"], x["dst"]): x for x in (served or {}).get("links", [])}
    rows = []
    llm = profile.llm is not None and _layered(plan)
    for f in plan.fragments:
        got = measured.get(f.fragment_id, {})
        predicted = {"step_s": None if llm else recost.step_time(profile, cluster, f, PLANNED.batch),
                     "batch": PLANNED.batch, "memory_bytes": f.memory_bytes, "param_bytes": f.param_bytes}
        if llm:
            predicted |= _llm_steps(profile, cluster, f)
        rows.append({"decision": f"{f.fragment_id} on {f.worker}", "reason": f.reason, "predicted": predicted,
                     "measured": (_llm_measured(served) if llm else _measured_step(got)) if got else None})
    for t in plan.transfers:
        got = links.get((t.src, t.dst), {})
        rows.append({
            "decision": f"link {t.src} -> {t.dst}", "reason": t.what,
            "predicted": {"bytes_per_request": t.bytes_per_request},
            "measured": {"bytes_per_request": got.get("measured_worker_bytes_per_request"),
                         "payload_bytes_per_request": got.get("measured_payload_bytes_per_request")} if got else None,
        })
    rows += [{"decision": "plan", "reason": r, "predicted": None, "measured": None} for r in plan.reasons]
    return rows


def _layered(plan: Plan) -> bool:
    return any(f.layer_start is not None for f in plan.fragments)


def _llm_steps(profile: Profile, cluster: ClusterSpec, f) -> dict[str, float]:
    from genie.semantic.planner.llm_costs import LLMCosts, Stage

    costs = LLMCosts(profile, PLANNED)
    stage = Stage(cluster.worker(f.worker), f.layer_start or 0, f.layer_end or costs.num_layers, f.has_embedding,
                  f.has_head)
    context = PLANNED.prompt_tokens + PLANNED.output_tokens // 2
    return {"prefill_s": costs.prefill_time(stage, PLANNED.prompt_tokens), "prompt_tokens": PLANNED.prompt_tokens,
            "decode_step_s_batch_1": costs.decode_time(stage, 1, context)}


def _llm_measured(served: dict | None) -> dict[str, Any]:
    m = (served or {}).get("measured", {})
    return {"step_s": None, "mean_tpot_s": m.get("mean_tpot_s"), "mean_ttft_s": m.get("mean_ttft_s"),
            "most_common_batch": None, "predicted_step_s_calibrated": None}


def _measured_step(frag: dict) -> dict[str, Any]:
    m, p = frag.get("measured", {}), frag.get("predicted", {})
    return {"step_s": m.get("step_s_at_planned_batch"), "most_common_batch": m.get("most_common_batch"),
            "step_s_at_most_common_batch": m.get("step_s_at_most_common_batch"),
            "predicted_step_s_calibrated": p.get("step_s_calibrated"), "rows": m.get("rows"),
            "fastest_step_s_at_most_common_batch": m.get("fastest_step_s_at_most_common_batch"),
            "predicted_step_s_calibrated_at_that_batch": m.get("predicted_step_s_calibrated_at_that_batch")}


def explain_text(rows: list[dict[str, Any]], source: str) -> str:
    lines = [f"  decisions ({source}):"]
    for r in rows:
        lines.append(f"  - {r['decision']}: {r['reason']}")
        pred, got = r["predicted"], r["measured"]
        if pred and "prefill_s" in pred:
            lines.append(f"      predicted: prefill {pred['prefill_s'] * 1e3:.1f} ms for {pred['prompt_tokens']} "
                         f"tokens, decode step {pred['decode_step_s_batch_1'] * 1e3:.1f} ms alone, memory "
                         f"{pred['memory_bytes']} B")
            if got and got.get("mean_tpot_s"):
                lines.append(f"      measured:  {got['mean_tpot_s'] * 1e3:.1f} ms per output token, "
                             f"{_fmt(got['mean_ttft_s'] and got['mean_ttft_s'] * 1e3, '.1f')} ms to the first "
                             "(the router's view of the whole replica)")
        elif pred and "step_s" in pred:
            lines.append(f"      predicted: step {pred['step_s'] * 1e6:.0f} us at batch {pred['batch']}, "
                         f"memory {pred['memory_bytes']} B")
            if got:
                lines.append("      measured:  " + _step_line(got))
        elif pred:
            lines.append(f"      predicted: {pred['bytes_per_request']} B per request")
            if got:
                lines.append(f"      measured:  {_fmt(got['bytes_per_request'], '.1f')} B per request "
                             f"(payload {_fmt(got['payload_bytes_per_request'], '.1f')} B)")
    return "\n".join(lines)


def _step_line(got: dict[str, Any]) -> str:
    at = got["step_s"]
    text = f"step {at * 1e6:.0f} us at the planned batch" if at else "no call at the planned batch yet"
    if got["most_common_batch"]:
        text += (f"; {got['step_s_at_most_common_batch'] * 1e6:.0f} us at batch {got['most_common_batch']} "
                 f"(its most common)")
    if got["predicted_step_s_calibrated"]:
        text += f"; predicted on the workers' measured speed: {got['predicted_step_s_calibrated'] * 1e6:.0f} us"
    if got.get("predicted_step_s_calibrated_at_that_batch") and got.get("fastest_step_s_at_most_common_batch"):
        text += (f" ({got['predicted_step_s_calibrated_at_that_batch'] * 1e6:.0f} us at batch "
                 f"{got['most_common_batch']}, whose fastest call took "
                 f"{got['fastest_step_s_at_most_common_batch'] * 1e6:.0f} us)")
    return text


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
