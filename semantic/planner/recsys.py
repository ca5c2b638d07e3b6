"""The recsys split: embedding tables (memory-bound: a step reads a few rows of large tables) apart from the dense
interaction + MLP (compute-bound), so that only the pooled embeddings cross the network.

The tables read nothing but the request's sparse ids, so the one link of the split carries the pooled
embeddings from the table fragments to the dense one: [batch, tables, dim] x dtype bytes, a few hundred bytes a
request, where shipping the tables' rows to the MLP would cost the tables' size.

A table that fits no worker is sharded by rows over several ("tables.2[0:120]", "tables.2[120:200]"). With more
than one tables fragment, each sends the whole pooled layout, zeros where it holds nothing, and the router adds
them up (serving/stateless/split.py): the link from each tables fragment carries the full pooled bytes.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from genie.semantic.cluster import ClusterSpec, WorkerSpec
from genie.semantic.planner import block_costs as bc
from genie.semantic.planner.generic import assemble, plan_blocks
from genie.semantic.planner.options import PlanOptions
from genie.semantic.planner.types import Plan, Prediction, Transfer
from genie.semantic.profile import Block, Profile

GiB = 2**30


def plan_recsys(profile: Profile, cluster: ClusterSpec, options: PlanOptions) -> Plan:
    """Replicate when the model fits a worker; otherwise split the tables from the MLP."""
    need = bc.whole_memory(profile, options)
    if any(need <= options.usable(w.memory_bytes) for w in cluster.workers):
        return plan_blocks(profile, cluster, options)
    return split_recsys(profile, cluster, options,
                        f"{profile.name} needs {need / GiB:.2f} GiB, more than one worker: embedding tables apart "
                        "from the dense MLP (tables are memory-bound, the MLP compute-bound)")


def split_recsys(profile: Profile, cluster: ClusterSpec, options: PlanOptions, why: str) -> Plan:
    """Dense part on the fastest worker it fits; tables packed by memory, on the other workers first."""
    sparse = sorted((b for b in profile.blocks if b.kind == "sparse"), key=lambda b: (-b.param_bytes, b.name))
    dense = [b for b in profile.blocks if b.kind != "sparse"]
    free = {w.name: options.usable(w.memory_bytes) for w in cluster.workers}
    dense_host = _dense_host(cluster.workers, dense, free, options)
    free[dense_host.name] -= bc.memory(dense, options)
    tables = _pack(profile, sparse, free, dense_host.name)
    frags, owner, groups = [], {}, []
    for i, name in enumerate(sorted(tables)):
        w, blocks = cluster.worker(name), tables[name]
        fid = f"sparse{i}"
        owner.update({b.name: fid for b in blocks})
        groups.append((w, blocks))
        frags.append(bc.fragment(fid, w, blocks, 0, 0, "sparse", f"{len(blocks)} embedding table(s), "
                                 f"{sum(b.param_bytes for b in blocks) / GiB:.2f} GiB: placed by memory on {name}", options))
    owner.update({b.name: "dense" for b in dense})
    groups.append((dense_host, dense))
    frags.append(bc.fragment("dense", dense_host, dense, 0, 1, "dense",
                             f"dense MLP is compute-bound: {dense_host.name} has the most FLOP/s", options))
    # The tables read only the request's ids (the top level slices them, which the table fragment does itself),
    # so what crosses is what the tables give: the pooled embeddings.
    sparse_ids = {f.fragment_id for f in frags if f.role == "sparse"}
    if len(sparse_ids) == 1:
        transfers = [t for t in bc.crossing(profile, owner) if t.src in sparse_ids]
    else:
        full = sum(b.output_bytes for b in sparse)
        transfers = [Transfer(fid, "dense", "pooled embeddings", 0, full, f"{fid} sends the whole pooled layout "
                              f"({full} B per request), zeros where it holds nothing; the router adds the parts")
                     for fid in sorted(sparse_ids)]
    lookups = max(bc.time(blocks, w, 1) for w, blocks in groups[:-1])
    hop = sum(t.bytes_per_request for t in transfers) / cluster.link_bandwidth
    latency = lookups + hop + bc.time(dense, dense_host, 1)
    slowest = max(bc.time(blocks, w, options.batch) for w, blocks in groups)
    predicted = Prediction(latency, options.batch / slowest, "requests/s", {"lookup_s": lookups, "transfer_s": hop})
    pooled = sum(t.bytes_per_request for t in transfers)
    rows = sum(b.param_bytes for b in sparse)
    reasons = [why, f"only the pooled embeddings cross: {pooled} B per request, where shipping the tables' rows "
               f"would move {rows} B", f"predicted: {latency * 1e3:.2f} ms per request, "
               f"{predicted.throughput:.1f} requests/s"]
    return assemble(profile, cluster, "recsys_split", frags, transfers, predicted, reasons)


def _pack(profile: Profile, sparse: list[Block], free: dict[str, int], dense_host: str) -> dict[str, list[Block]]:
    """Largest table first, onto the roomiest worker that is not the dense host; the dense host takes overflow."""
    tables: dict[str, list[Block]] = defaultdict(list)
    for b in sparse:
        fits = [n for n in free if free[n] >= b.param_bytes]
        if not fits:
            for name, shard in _shards(profile, b, free, dense_host):
                tables[name].append(shard)
            continue
        name = max(fits, key=lambda n: (n != dense_host, free[n], n))
        free[name] -= b.param_bytes
        tables[name].append(b)
    return tables


def _shards(profile: Profile, b: Block, free: dict[str, int], dense_host: str) -> list[tuple[str, Block]]:
    """A table too big for any worker, cut by rows: the roomiest workers first, each taking the rows it has room
    for. A row is what one lookup of the example returns (output_bytes), so rows = param_bytes / output_bytes."""
    row = b.output_bytes
    if row <= 0 or b.param_bytes % row:
        raise ValueError(f"{profile.name}: embedding table {b.name} ({b.param_bytes / GiB:.2f} GiB) fits no worker "
                         "and its rows are unknown, so it cannot be sharded; add memory or workers")
    rows, start, shards = b.param_bytes // row, 0, []
    for name in sorted(free, key=lambda n: (n == dense_host, -free[n], n)):
        take = min(rows - start, free[name] // row)
        if take <= 0:
            continue
        shards.append((name, dataclasses.replace(b, name=f"{b.name}[{start}:{start + take}]",
                                                 param_bytes=take * row)))
        free[name] -= take * row
        start += take
        if start == rows:
            return shards
    raise ValueError(f"{profile.name}: embedding table {b.name} ({b.param_bytes / GiB:.2f} GiB) does not fit the "
                     "workers' remaining memory even sharded by rows; add memory or workers")


def _dense_host(workers: tuple[WorkerSpec, ...], dense: list[Block], free: dict[str, int], options: PlanOptions) -> WorkerSpec:
    need = bc.memory(dense, options)
    fits = [w for w in workers if free[w.name] >= need]
    if not fits:
        raise ValueError(f"the dense part needs {need / GiB:.2f} GiB and fits no worker; add memory")
    return max(fits, key=lambda w: (w.flops, w.name))
