"""Plans over profile blocks for stateless models (vision, encoders, audio, unknown): replicate when the model
fits a worker, otherwise a pipeline of contiguous blocks."""

from __future__ import annotations

from genie.semantic.cluster import ClusterSpec, WorkerSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import Plan, PlanFragment, Prediction, Transfer
from genie.semantic.profile import Block, Profile

GiB = 2**30


def plan_blocks(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    need = bc.whole_memory(profile, options)
    whole = sorted((w for w in cluster.workers if need <= options.usable(w.memory_bytes)), key=lambda w: w.name)
    if whole:
        return replicas(profile, cluster, options, whole, f"{profile.workload_type} model fits one worker")
    return pipeline(profile, cluster, options)


def replicas(profile: Profile, cluster: ClusterSpec, options: PlanOptions, whole: list[WorkerSpec], why: str) -> Plan:
    need = bc.whole_memory(profile, options) / GiB
    frags = [bc.fragment(f"r{r}", w, profile.blocks, r, 0, "all",
                         f"whole model ({need:.2f} GiB) fits {w.name}: replicate, no transfers", options)
             for r, w in enumerate(whole)]
    t1 = max(bc.time(profile.blocks, w, 1) for w in whole)
    rate = sum(options.batch / bc.time(profile.blocks, w, options.batch) for w in whole)
    predicted = Prediction(t1, rate, "requests/s", {"batch_time_s": max(bc.time(profile.blocks, w, options.batch) for w in whole)})
    reasons = [f"{why} ({need:.2f} GiB): {len(frags)} replica(s), requests spread across them",
               f"predicted: {t1 * 1e3:.2f} ms per request alone, {rate:.1f} requests/s at batch {options.batch}"]
    strategy = "replicas" if len(frags) > 1 else "single"
    return assemble(profile, cluster, strategy, frags, [], predicted, reasons)


def pipeline(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    workers = sorted(cluster.workers, key=lambda w: (-w.memory_bytes, w.name))
    stages = _fill(profile.blocks, workers, options)
    if stages is not None:
        stages = _balance(profile.blocks, [w for w, _ in stages], options) or stages
    if stages is None:
        need = bc.whole_memory(profile, options) / GiB
        have = sum(options.usable(w.memory_bytes) for w in workers) / GiB
        raise ValueError(f"{profile.name} needs {need:.2f} GiB but the cluster offers {have:.2f} GiB usable (or one "
                         "block is larger than any worker); add memory or lower PlanOptions.batch")
    frags, owner = [], {}
    for i, (w, blocks) in enumerate(stages):
        fid = f"r0s{i}"
        owner.update({b.name: fid for b in blocks})
        frags.append(bc.fragment(fid, w, blocks, 0, i, "all", f"blocks {blocks[0].name or '<top>'} .. "
                                 f"{blocks[-1].name or '<top>'} fit {w.name}", options))
    transfers = bc.crossing(profile, owner)
    times = [bc.time(blocks, w, options.batch) for w, blocks in stages]
    hop = sum(t.bytes_per_request for t in transfers) / cluster.link_bandwidth
    latency = sum(bc.time(blocks, w, 1) for w, blocks in stages) + hop
    predicted = Prediction(latency, options.batch / max(times), "requests/s", {"slowest_stage_s": max(times)})
    reasons = [f"{profile.name} does not fit one worker: {len(stages)} pipeline stages of contiguous blocks, cut "
               "where the slowest stage is fastest among the cuts that fit",
               f"predicted: {latency * 1e3:.2f} ms per request, {predicted.throughput:.1f} requests/s"]
    return assemble(profile, cluster, "pipeline", frags, transfers, predicted, reasons)


def _fill(blocks: list[Block], workers: list[WorkerSpec], options: PlanOptions) -> list[tuple[WorkerSpec, list[Block]]] | None:
    stages, i = [], 0
    for w in workers:
        if i == len(blocks):
            break
        room, j = options.usable(w.memory_bytes), i
        while j < len(blocks) and bc.memory(blocks[i : j + 1], options) <= room:
            j += 1
        if j == i:
            return None
        stages.append((w, blocks[i:j]))
        i = j
    return stages if i == len(blocks) else None


def _balance(blocks: list[Block], workers: list[WorkerSpec],
             options: PlanOptions) -> list[tuple[WorkerSpec, list[Block]]] | None:
    """The contiguous cut into one stage per worker (in order) whose slowest stage is fastest, each stage
    fitting its worker: a pipeline runs at the pace of its slowest stage. None when no such cut exists."""
    n, k = len(blocks), len(workers)
    # best[s][i]: (slowest stage time, cut points) for blocks[:i] on workers[:s]
    best: list[dict[int, tuple[float, tuple[int, ...]]]] = [{0: (0.0, ())}] + [{} for _ in range(k)]
    for s, w in enumerate(workers, start=1):
        room = options.usable(w.memory_bytes)
        for i in range(s, n + 1):
            for j, (slowest, cuts) in best[s - 1].items():
                if j >= i or bc.memory(blocks[j:i], options) > room:
                    continue
                cand = (max(slowest, bc.time(blocks[j:i], w, options.batch)), (*cuts, i))
                if i not in best[s] or cand < best[s][i]:
                    best[s][i] = cand
    if n not in best[k]:
        return None
    cuts = (0, *best[k][n][1])
    return [(w, blocks[a:b]) for w, a, b in zip(workers, cuts[:-1], cuts[1:], strict=True)]


def assemble(profile: Profile, cluster: ClusterSpec, strategy: str, frags: list[PlanFragment],
          transfers: list[Transfer], predicted: Prediction, reasons: list[str]) -> Plan:
    return Plan(profile.name, strategy, frags, transfers, predicted, reasons, cluster.fingerprint(),
                profile.analyzer_version)
