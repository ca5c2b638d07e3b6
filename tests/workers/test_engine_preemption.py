"""Preemption and recompute on genie's own engine: the scheduler's plans run on a real Fragment (paged KV
cache, batched steps) of the lively tiny GPT-2. With a KV cache too small for every request at once, some are
preempted and prefilled again from prompt + output (from their cached blocks too, with prefix caching); every
output equals the same request's output with room to spare. The contrast shows the test can fail: the same run
with the re-prefill's tokens mangled gives different outputs."""

from __future__ import annotations

import pytest
import torch

from genie.serving.request import Request
from genie.serving.scheduler import Scheduler, SchedulerConfig
from genie.workers.contract import FragmentSpec
from genie.workers.engine.loader import load_fragment

BLOCK = 16


def requests() -> list[Request]:
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(12, 40, (6,), generator=g).tolist()
    return [Request(f"r{i}", torch.randint(0, 1000, (n,), generator=g).tolist(), max_tokens=24)
            for i, n in enumerate(lengths)]


def run(gpt2_tiny_dir, kv_bytes: int, caching: bool, mangle: bool = False) -> tuple[dict[str, list[int]], int]:
    """Every request to the end, one scheduler step at a time on one fragment; returns outputs and preemptions."""
    frag = load_fragment(FragmentSpec("f", str(gpt2_tiny_dir), dtype="float32", kv_cache_bytes=kv_bytes,
                                      block_size=BLOCK))
    config = SchedulerConfig(max_batch_tokens=64, max_running_requests=6, prefill_chunk_tokens=16,
                             max_context=512, prefix_caching=caching)
    sched = Scheduler(config, {"r0": frag.info.num_kv_blocks}, BLOCK)
    reqs = requests()
    for req in reqs:
        sched.add(req)
    outputs: dict[str, list[int]] = {}
    while sched.has_work():
        plan = sched.schedule()
        frag.release([rid for rid, _ in plan.preempted])
        for names in sched.take_evictions().values():
            frag.evict(names)
        if not plan.num_seqs:
            continue
        steps = [seq.to_seq_step() for seq in plan.batches["r0"]]
        if mangle:  # a broken recompute: a preempted request's prompt comes back reversed
            for step in steps:
                if sched.get(step.seq_id).num_preemptions and step.position == 0:
                    step.token_ids = step.token_ids[::-1]
        sampled = {r.seq_id: r.token_id for r in frag.step(steps) if r.token_id is not None}
        for event in sched.update(plan, sampled):
            if event.token_id is not None:
                outputs.setdefault(event.request_id, []).append(event.token_id)
            if event.release_from is not None:
                frag.release([event.request_id])
    assert frag.stats().kv_blocks_used == 0
    return outputs, sum(req.num_preemptions for req in reqs)


@pytest.mark.parametrize("caching", [False, True])
def test_preempted_requests_recompute_to_the_same_outputs(gpt2_tiny_dir, caching) -> None:
    roomy, none = run(gpt2_tiny_dir, 64 << 20, caching)
    tight, preempted = run(gpt2_tiny_dir, 12 * 32 << 10, caching)  # 12 blocks of 32 KiB: 192 tokens for ~380
    assert none == 0 and preempted > 0
    assert tight == roomy
    mangled, _ = run(gpt2_tiny_dir, 12 * 32 << 10, caching, mangle=True)
    assert mangled != roomy, "a mangled recompute went unnoticed: the test could not catch it"
