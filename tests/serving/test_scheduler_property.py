"""Random arrivals, aborts, shared prompt prefixes and tight KV caches; every step must keep the scheduler's
promises, and its block accounting (cached, shared and evictable blocks too) must equal the workers'.

Each seed draws a cluster, a config and a stream of requests, then runs the router's loop against fake
workers that check positions and block counts themselves. Seeded `random` rather than hypothesis keeps the
cases reproducible by number without another dependency.
"""

from __future__ import annotations

import random

import pytest
from builders import Driver, make_request, reference_output

from genie.errors import InvalidRequest, ResourceExhausted
from genie.serving.request import FinishReason


def draw_driver(rng: random.Random) -> Driver:
    block_size = rng.choice([1, 2, 4, 8])
    replicas = {f"r{i}": rng.randint(3, 40 // block_size + 3) for i in range(rng.randint(1, 3))}
    budget = rng.randint(2, 40)
    return Driver.build(
        replicas,
        block_size,
        max_batch_tokens=budget,
        prefill_chunk_tokens=rng.randint(1, budget),
        max_running_requests=rng.randint(1, 6),
        max_queue=rng.randint(1, 12),
        max_context=rng.randint(8, 120),
    )


def check_plan(drv: Driver, accepted: dict) -> None:
    plan, sched = drv.plans[-1], drv.scheduler
    assert plan.num_tokens <= sched.config.max_batch_tokens
    assert plan.num_seqs <= sched.config.max_running_requests
    assert sched.num_running() <= sched.config.max_running_requests
    ids = [seq.request_id for _, seq in plan.seqs()]
    assert len(ids) == len(set(ids))
    for replica, seq in plan.seqs():
        assert accepted[seq.request_id].replica == replica
        assert seq.num_tokens <= sched.config.prefill_chunk_tokens


@pytest.mark.parametrize("seed", range(60))
def test_random_workloads_keep_every_invariant_and_reproduce_outputs(seed: int):
    rng = random.Random(seed)
    drv = draw_driver(rng)
    sched = drv.scheduler
    largest = max(sched.blocks.capacity_tokens(r) for r in sched.blocks.replicas)
    accepted, aborted = {}, set()
    arrivals = sorted(rng.randint(0, 30) for _ in range(rng.randint(1, 25)))
    families = [make_request(f"family-{seed}-{i}", prompt=rng.randint(1, 50)).prompt_ids for i in range(3)]
    step = 0
    while arrivals or sched.has_work():
        assert step < 5000, f"seed {seed}: no progress"
        while arrivals and arrivals[0] <= step:
            arrivals.pop(0)
            name = f"s{seed}-q{len(accepted) + len(aborted)}-{step}"
            req = make_request(name, prompt=rng.randint(1, 60))
            if rng.random() < 0.6:  # most share a prefix of one of a few families: hits, partial hits, evictions
                family = families[rng.randrange(len(families))]
                req.prompt_ids = family[: rng.randint(0, len(family))] + req.prompt_ids[: rng.randint(1, 20)]
            req.max_tokens = rng.randint(1, 30)
            req.eos_token_ids = frozenset(rng.sample(range(997), rng.choice([0, 0, 5, 40])))
            try:
                sched.add(req)
            except InvalidRequest:
                assert req.num_prompt >= min(sched.config.max_context, largest + 1)
                continue
            except ResourceExhausted:
                assert sched.num_waiting() >= sched.config.max_queue
                continue
            accepted[req.request_id] = req
        live = [rid for rid, req in accepted.items() if not req.is_done]
        if live and rng.random() < 0.05:
            victim = rng.choice(live)
            drv.abort(victim)
            aborted.add(victim)
        if sched.has_work():
            drv.step()
            check_plan(drv, accepted)
        step += 1

    assert all(used == 0 for used, _ in sched.kv_usage().values())
    assert all(not seqs for seqs in drv.workers.kv.values()), "a sequence was never released on its worker"
    for rid, req in accepted.items():
        if req.replica is None:  # aborted before it was ever admitted
            assert rid in aborted and rid not in drv.outputs
            continue
        limit = min(sched.config.max_context, sched.blocks.capacity_tokens(req.replica))
        expected = reference_output(req, limit)
        got = drv.outputs.get(rid, [])
        if rid in aborted:
            assert req.finish_reason in (FinishReason.ABORT, FinishReason.STOP, FinishReason.LENGTH)
            assert got == expected[: len(got)]
        else:
            assert got == expected, f"seed {seed}: {rid} diverged (preempted {req.num_preemptions}x)"
            assert req.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
