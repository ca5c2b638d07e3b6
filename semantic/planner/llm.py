"""LLM plans: replicas when the model fits a worker, a layer pipeline when it does not, and prefill/decode
disaggregation (one KV handoff per request) when the SLOs favour it.

The KV cache of a layer always lives on the worker that holds the layer (it is co-located, never moved per step).
"""

from __future__ import annotations

from genie.semantic.cluster import ClusterSpec, WorkerSpec
from genie.semantic.planner.llm_costs import LLMCosts, Stage, fits_whole, partition
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import Plan, PlanFragment, Prediction, Transfer
from genie.semantic.profile import Profile

GiB = 2**30


def plan_llm(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    costs = LLMCosts(profile, options)
    workers = sorted(cluster.workers, key=lambda w: (-w.memory_bytes, w.name))
    whole = [w for w in workers if fits_whole(costs, w)]
    need = costs.memory(0, costs.num_layers, True, True) / GiB
    if not whole:
        return _pipeline(profile, cluster, costs, workers, need)
    replicas = _replicas(profile, cluster, costs, whole, need)
    if options.disaggregate is False or len(whole) < 2:
        return replicas
    split = _disaggregated(profile, cluster, costs, whole)
    if options.disaggregate or _slo_prefers(split, replicas, options):
        return split
    return replicas


def _replicas(profile: Profile, cluster: ClusterSpec, costs: LLMCosts, whole: list[WorkerSpec], need: float) -> Plan:
    n = costs.num_layers
    frags, stages = [], []
    for r, w in enumerate(sorted(whole, key=lambda w: w.name)):
        st = Stage(w, 0, n, True, True)
        stages.append([st])
        frags.append(_fragment(costs, st, r, 0, f"r{r}", "all",
                               f"whole model ({need:.2f} GiB with KV for {costs.options.batch} x "
                               f"{costs.options.context_tokens} tokens) fits {w.name}: replicate, no transfers"))
    strategy = "replicas" if len(frags) > 1 else "single"
    reasons = [f"{profile.name} needs {need:.2f} GiB per replica and fits on {len(whole)} of "
               f"{len(cluster.workers)} workers: {len(frags)} independent replica(s), each with its own KV cache"]
    idle = [w.name for w in cluster.workers if w not in whole]
    if idle:
        reasons.append(f"workers {idle} are too small for a whole replica and stay idle")
    predicted = _predict(costs, stages[0], len(stages), cluster.link_bandwidth)
    return _finish(profile, cluster, strategy, frags, [], predicted, reasons, costs.options.batch)


def _pipeline(profile: Profile, cluster: ClusterSpec, costs: LLMCosts, workers: list[WorkerSpec], need: float) -> Plan:
    replicas, left = [], list(workers)
    while (stages := partition(costs, left)) is not None:
        replicas.append(stages)
        left = [w for w in left if w not in {st.worker for st in stages}]
    if not replicas:
        have = sum(costs.options.usable(w.memory_bytes) for w in workers) / GiB
        raise ValueError(
            f"{profile.name} needs {need:.2f} GiB (weights + KV for {costs.options.batch} x "
            f"{costs.options.context_tokens} tokens) but the {len(workers)} worker(s) offer {have:.2f} GiB usable; "
            "add workers or memory, or lower batch / context_tokens in PlanOptions"
        )
    frags, transfers = [], []
    per_token = costs.hidden_bytes
    for r, stages in enumerate(replicas):
        for i, st in enumerate(stages):
            why = (f"layers {st.start}-{st.end - 1} ({costs.memory(st.start, st.end, st.embedding, st.head) / GiB:.2f}"
                   f" GiB) fit {st.worker.name}; their KV cache stays with them")
            frags.append(_fragment(costs, st, r, i, f"r{r}s{i}", "all", why))
            if i:
                transfers.append(Transfer(
                    src=f"r{r}s{i - 1}", dst=f"r{r}s{i}", what="hidden states", bytes_per_token=per_token,
                    bytes_per_request=per_token * costs.options.prompt_tokens,
                    reason=f"pipeline boundary before layer {st.start}: hidden size {costs.shape.hidden_size} x "
                           f"{costs.shape.dtype_bytes} B per token",
                ))
    reasons = [f"{profile.name} needs {need:.2f} GiB, more than any one worker holds: split its "
               f"{costs.num_layers} layers into {len(replicas[0])} pipeline stages"]
    if len(replicas) > 1:
        reasons.append(f"{len(replicas)} pipeline replicas fit the cluster")
    predicted = _predict(costs, replicas[0], len(replicas), cluster.link_bandwidth)
    return _finish(profile, cluster, "pipeline", frags, transfers, predicted, reasons, costs.options.batch)


def _disaggregated(profile: Profile, cluster: ClusterSpec, costs: LLMCosts, whole: list[WorkerSpec]) -> Plan:
    pre = max(whole, key=lambda w: (w.flops, w.name))
    dec = max((w for w in whole if w is not pre), key=lambda w: (w.bandwidth, w.name))
    n, o = costs.num_layers, costs.options
    p_stage, d_stage = Stage(pre, 0, n, True, True), Stage(dec, 0, n, True, True)
    frags = [
        _fragment(costs, p_stage, 0, 0, "prefill0", "prefill",
                  f"prefill is compute-bound: {pre.name} has the most FLOP/s ({pre.flops / 1e12:.1f} TFLOP/s)"),
        _fragment(costs, d_stage, 0, 1, "decode0", "decode",
                  f"decode is memory-bound: {dec.name} has the most bandwidth ({dec.bandwidth / 1e9:.0f} GB/s); "
                  "it keeps every request's KV cache"),
    ]
    handoff = costs.shape.kv_bytes_per_token * o.prompt_tokens
    transfers = [Transfer("prefill0", "decode0", "KV cache handoff", 0, handoff,
                          f"once per request: {costs.shape.kv_bytes_per_token} B/token x {o.prompt_tokens} prompt tokens")]
    reasons = ["prefill and decode on separate workers: decode steps never wait behind a prefill"]
    ttft = costs.prefill_time(p_stage, o.prompt_tokens) + handoff / cluster.link_bandwidth
    tpot = costs.decode_time(d_stage, o.batch, o.prompt_tokens + o.output_tokens // 2)
    tpot1 = costs.decode_time(d_stage, 1, o.prompt_tokens + o.output_tokens // 2)
    prefill_rate = o.output_tokens / costs.prefill_time(p_stage, o.prompt_tokens)  # tokens/s the prefill side feeds
    throughput = min(o.batch / tpot, prefill_rate)
    detail = {"ttft_s": ttft, "tpot_s": tpot1, "tpot_batch_s": tpot, "tpot_effective_s": tpot, "kv_handoff_bytes": handoff}
    predicted = Prediction(ttft + (o.output_tokens - 1) * tpot1, throughput, "tokens/s", detail)
    return _finish(profile, cluster, "disaggregated", frags, transfers, predicted, reasons, o.batch)


def _slo_prefers(split: Plan, replicas: Plan, o: PlanOptions) -> bool:
    """Disaggregate only when the replicas miss the TPOT objective and the split meets every objective."""
    if o.tpot_slo_s is None:
        return False
    rep, dis = replicas.predicted.detail, split.predicted.detail
    meets_ttft = o.ttft_slo_s is None or dis["ttft_s"] <= o.ttft_slo_s
    return rep["tpot_effective_s"] > o.tpot_slo_s >= dis["tpot_batch_s"] and meets_ttft


def _fragment(costs: LLMCosts, st: Stage, replica: int, stage: int, fid: str, role: str, reason: str) -> PlanFragment:
    return PlanFragment(
        fragment_id=fid, worker=st.worker.name, replica=replica, stage=stage, layer_start=st.start,
        layer_end=st.end, has_embedding=st.embedding, has_head=st.head, nodes=[], reason=reason, role=role,
        param_bytes=costs.weights(st.start, st.end, st.embedding, st.head),
        memory_bytes=costs.memory(st.start, st.end, st.embedding, st.head),
        kv_bytes_per_token=int(costs.kv_layer * (st.end - st.start)), flops=costs.flops(st),
    )


def _predict(costs: LLMCosts, stages: list[Stage], replicas: int, link: float) -> Prediction:
    """One replica's stages in order; throughput counts every replica, each stalled once per sequence by prefill."""
    o = costs.options
    context = o.prompt_tokens + o.output_tokens // 2
    hops = len(stages) - 1
    ttft = sum(costs.prefill_time(st, o.prompt_tokens) for st in stages) + hops * costs.hidden_bytes * o.prompt_tokens / link
    tpot1 = sum(costs.decode_time(st, 1, context) for st in stages) + hops * costs.hidden_bytes / link
    tpot = sum(costs.decode_time(st, o.batch, context) for st in stages) + hops * costs.hidden_bytes * o.batch / link
    effective = tpot + ttft * o.batch / o.output_tokens
    detail = {"ttft_s": ttft, "tpot_s": tpot1, "tpot_batch_s": tpot, "tpot_effective_s": effective,
              "stage_decode_s": max(costs.decode_time(st, o.batch, context) for st in stages)}
    return Prediction(ttft + (o.output_tokens - 1) * tpot1, replicas * o.batch / effective, "tokens/s", detail)


def _finish(profile: Profile, cluster: ClusterSpec, strategy: str, frags: list[PlanFragment],
            transfers: list[Transfer], predicted: Prediction, reasons: list[str], batch: int) -> Plan:
    d = predicted.detail
    reasons.append(f"predicted: TTFT {d['ttft_s'] * 1e3:.1f} ms, {d['tpot_s'] * 1e3:.2f} ms/token alone, "
                   f"{predicted.throughput:.0f} tokens/s at batch {batch}")
    return Plan(profile.name, strategy, frags, transfers, predicted, reasons, cluster.fingerprint(),
                profile.analyzer_version)
