"""Plans that split a model by meaning rather than by order: independent modality branches run in parallel
(multimodal). The recsys split (tables apart from the MLP) is in recsys.py."""

from __future__ import annotations

from collections import defaultdict

from genie.semantic.cluster import ClusterSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.generic import assemble, plan_blocks
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import Plan, Prediction
from genie.semantic.profile import Block, Profile

GiB = 2**30


def plan_branches(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    """Each modality branch on its own worker; fusion and what follows beside the heaviest branch."""
    branches: dict[str, list[Block]] = defaultdict(list)
    for b in profile.blocks:
        if b.branch:
            branches[b.branch].append(b)
    if len(cluster.workers) < 2 or len(branches) < 2:
        return plan_blocks(profile, cluster, options)
    order = sorted(branches, key=lambda m: (-sum(b.flops for b in branches[m]), m))
    workers = sorted(cluster.workers, key=lambda w: (-w.flops, w.name))
    placed = {m: workers[i % len(workers)] for i, m in enumerate(order)}
    rest = [b for b in profile.blocks if not b.branch]
    frags, owner, groups = [], {}, []
    for i, m in enumerate(order):
        fid = f"branch:{m}"
        owner.update({b.name: fid for b in branches[m]})
        groups.append((fid, placed[m], branches[m]))
        frags.append(bc.fragment(fid, placed[m], branches[m], 0, 0, fid,
                                 f"the {m} encoder depends on no other input: runs in parallel on {placed[m].name}",
                                 options))
    if rest:
        host = placed[order[0]]
        owner.update({b.name: "fusion" for b in rest})
        groups.append(("fusion", host, rest))
        frags.append(bc.fragment("fusion", host, rest, 0, 1, "fusion",
                                 f"fusion and heads beside the heaviest branch ({order[0]}) on {host.name}: only "
                                 "the other branches' outputs cross the network", options))
    _check_memory(profile, groups, options)
    transfers = bc.crossing(profile, owner)
    link = cluster.link_bandwidth
    sent = {t.src: t.bytes_per_request / link for t in transfers}
    branch_t = [bc.time(branches[m], placed[m], 1) + sent.get(f"branch:{m}", 0.0) for m in order]
    latency = max(branch_t) + (bc.time(rest, placed[order[0]], 1) if rest else 0.0)
    busy: dict[str, float] = defaultdict(float)
    for _, w, blocks in groups:
        busy[w.name] += bc.time(blocks, w, options.batch)
    predicted = Prediction(latency, options.batch / max(busy.values()), "requests/s",
                           {f"branch_{m}_s": t for m, t in zip(order, branch_t, strict=True)})
    reasons = [f"{len(order)} independent branches ({', '.join(order)}) run in parallel on different workers; "
               "they meet only at the fusion point",
               f"predicted: {latency * 1e3:.2f} ms per request, {predicted.throughput:.1f} requests/s"]
    return assemble(profile, cluster, "branch_parallel", frags, transfers, predicted, reasons)


def _check_memory(profile: Profile, groups: list, options: PlanOptions) -> None:
    load: dict[str, int] = defaultdict(int)
    workers = {}
    for _, w, blocks in groups:
        load[w.name] += bc.memory(blocks, options)
        workers[w.name] = w
    for name, used in sorted(load.items()):
        if used > options.usable(workers[name].memory_bytes):
            raise ValueError(f"{profile.name}: the branches placed on {name} need {used / GiB:.2f} GiB, more than "
                             f"it offers; add workers or memory")
