"""A replica: one full copy of the model, as one fragment or a pipeline of fragments on several workers.

A step over a replica drives its stages in order: the first stage gets token ids, each later stage gets the
previous stage's hidden states, and the last stage samples. Every stage keeps its own share of the KV cache.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from genie.workers.client import WorkerClient
from genie.workers.contract import SeqResult, SeqStep


@dataclass(slots=True)
class Stage:
    worker: str  # worker name from the plan, e.g. "worker-0"
    client: WorkerClient
    fragment_id: str


@dataclass(slots=True)
class Replica:
    name: str
    stages: list[Stage]
    num_blocks: int  # the smallest KV cache of its stages
    prefix_seed: bytes = b""  # what decides its KV besides the tokens: weights, layers, dtype, block size
    alive: bool = True
    failure: str | None = None
    warm: bool = False  # a real generation step has succeeded on it
    steps: int = field(default=0)

    @property
    def workers(self) -> list[str]:
        return [stage.worker for stage in self.stages]

    async def step(self, seqs: list[SeqStep], timeout: float | None) -> list[SeqResult]:
        """Runs one batched step through every stage; returns the last stage's results."""
        if len(self.stages) == 1:  # one stage gets the seqs as they are: ids in, samples out
            stage = self.stages[0]
            results = await stage.client.step(stage.fragment_id, seqs, timeout=timeout)
            self.steps += 1
            return results
        results: list[SeqResult] = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            # Only the last stage holds the head and samples; later stages read the previous hidden states
            # (the last one also the ids, when its penalties count them or a guide follows them).
            batch = [
                SeqStep(
                    s.seq_id,
                    s.position,
                    token_ids=s.token_ids if i == 0 or (i == last and _needs_ids(s)) else None,
                    hidden=results[j].hidden if i > 0 else None,
                    sample=s.sample and i == last,
                    sampling=s.sampling,
                    cached_prefix=s.cached_prefix,
                    new_block_hashes=s.new_block_hashes,
                )
                for j, s in enumerate(seqs)
            ]
            results = await stage.client.step(stage.fragment_id, batch, timeout=timeout)
        self.steps += 1
        return results

    async def release(self, seq_ids: list[str], timeout: float | None, evict: list[bytes] | None = None) -> None:
        """Frees the sequences' KV on every stage, then evicts the named cached blocks there."""
        if seq_ids or evict:
            extra = {"evict": evict} if evict else {}
            await asyncio.gather(*(s.client.release(s.fragment_id, seq_ids, timeout=timeout, **extra) for s in self.stages))

    def mark_failed(self, reason: str) -> None:
        self.alive = False
        self.failure = reason


def _needs_ids(seq: SeqStep) -> bool:
    return seq.sampling.counts_tokens or seq.sampling.guided


def replicas_ready(accepting: bool, replicas: dict[str, Replica]) -> bool:
    """A model is ready while it takes requests and at least one replica can serve them."""
    return accepting and any(r.alive and r.warm for r in replicas.values())


def not_ready_reasons(accepting: bool, replicas: dict[str, Replica], model: str | None = None) -> list[str]:
    """Why a model is not ready, or what is degraded about it, for /health/ready and gRPC Health; `model`
    names it where a server holds several."""
    of = f" of {model}" if model else ""
    reasons = [] if accepting else ["the server is shutting down"]
    if not any(r.alive and r.warm for r in replicas.values()):
        reasons.append(f"no replica of {model or 'the model'} can serve")
    for r in replicas.values():
        if not r.alive:
            reasons.append(f"replica {r.name}{of} ({', '.join(r.workers)}) is down: {r.failure}")
        elif not r.warm:
            reasons.append(f"replica {r.name}{of} has not completed a first call yet")
    return reasons
