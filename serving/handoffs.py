"""The router's side of prefill/decode disaggregation: it runs the KV handoffs the scheduler plans.

A handoff is one SendKV to the prefill worker, which sends the request's KV straight to the decode worker
(ImportKV there) and frees its own copy once the receiver acknowledges or the lease runs out
(workers/handoff.py). The KV never passes through the router. The outcome comes back to the router loop as a
command, like a finished step, and goes to `Scheduler.handoff_done`: delivered, the request decodes on the
decode replica; not delivered, the decode replica prefills it itself, so the request still completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from genie.errors import Unavailable
from genie.protos import worker_pb2 as pb

from .metrics import Metrics
from .replica import Replica
from .step_plan import KVHandoff

log = logging.getLogger("genie.serve")

LEASE_GRACE_S = 5.0  # beyond the lease, for the SendKV answer itself; the worker frees its copy by the lease


class HandoffDriver:
    def __init__(self, replicas: Mapping[str, Replica], metrics: Metrics, inbox: asyncio.Queue[tuple],
                 lease_s: float, kv_bytes_per_token: int) -> None:
        self._replicas = replicas  # the router's own mapping: a rejoined replica is seen at once
        self._metrics = metrics
        self._inbox = inbox
        self.lease_s = lease_s
        self.kv_bytes_per_token = kv_bytes_per_token  # predicted, from the profile; 0 when unknown
        self._moves: dict[str, tuple[KVHandoff, asyncio.Task]] = {}

    def __len__(self) -> int:
        return len(self._moves)

    def tasks(self) -> list[asyncio.Task]:
        return [task for _, task in self._moves.values()]

    def involves(self, replica: str) -> bool:
        return any(replica in (move.source, move.target) for move, _ in self._moves.values())

    def start(self, move: KVHandoff) -> asyncio.Task:
        task = asyncio.create_task(self._run(move), name=f"handoff-{move.request_id}")
        self._moves[move.request_id] = (move, task)
        return task

    async def _run(self, move: KVHandoff) -> None:
        try:
            outcome: pb.SendKVResponse | BaseException = await self._send(move)
        except BaseException as exc:  # noqa: BLE001 - any failure means the decode side prefills instead
            outcome = exc
        self._inbox.put_nowait(("handed", move, outcome))

    async def _send(self, move: KVHandoff) -> pb.SendKVResponse:
        source, target = self._replicas[move.source], self._replicas[move.target]
        if not source.alive or not target.alive:
            raise Unavailable(f"replica {move.source if not source.alive else move.target} is down")
        src, dst = source.stages[0], target.stages[0]
        return await src.client.send_kv(src.fragment_id, move.request_id, dst.client.address, dst.fragment_id,
                                        self.lease_s, timeout=self.lease_s + LEASE_GRACE_S,
                                        skip_tokens=move.skip_tokens, prefix=move.cached_prefix,
                                        new_hashes=move.new_block_hashes)

    def finish(self, move: KVHandoff, outcome: pb.SendKVResponse | BaseException) -> bool:
        """Counts a handoff that came back; True when the decode worker holds the KV now."""
        self._moves.pop(move.request_id, None)
        m = self._metrics
        if isinstance(outcome, BaseException):
            delivered, error = False, str(outcome) or type(outcome).__name__
        else:
            delivered, error = outcome.delivered, outcome.error
        if delivered:  # measured beside predicted, for the handoffs that happened
            m.handoff_bytes.inc(outcome.bytes)
            m.handoff_predicted_bytes.inc(self.kv_bytes_per_token * move.sent_tokens)
            m.handoff_cached_tokens.inc(move.skip_tokens)
            m.handoff_seconds.observe(outcome.seconds)
        m.handoffs.labels("delivered" if delivered else "fallback").inc()
        if not delivered:
            log.warning("KV handoff of %s (%d tokens) from replica %s to %s failed: %s; %s prefills it itself",
                        move.request_id, move.tokens, move.source, move.target, error, move.target)
        return delivered
