"""KV handoff, worker to worker: what prefill/decode disaggregation moves, once per request.

The worker that prefilled a sequence sends its whole KV straight to the worker that will decode it (SendKV
here, ImportKV there), over the same authenticated link the router uses, never through the router. The
handoff is leased: the sender keeps its copy until the receiver acknowledges, or until `lease_s` runs out,
and frees it either way. A receiver that is gone or hung costs the sender at most the lease; the caller
learns whether the KV arrived and falls back to prefilling on the receiver when it did not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from genie.errors import AlreadyExists, GenieError, InvalidRequest, NotFound, ResourceExhausted
from genie.workers.engine.fragment import Fragment
from genie.workers.engine.kv_io import export_kv, import_kv, kv_shape

MAX_LEASE_S = 600.0


@dataclass(frozen=True, slots=True)
class Handoff:
    """What one SendKV did."""

    delivered: bool  # the receiver holds the sequence now
    error: str  # why not, when not delivered
    tokens: int
    bytes: int  # serialized KV bytes sent
    seconds: float  # from export to acknowledgement or failure


def check_send(seq_id: str, target: str, lease_s: float) -> None:
    if not seq_id:
        raise InvalidRequest("SendKV needs the seq_id of the sequence to hand off")
    if not target:
        raise InvalidRequest("SendKV needs a target worker address (host:port)")
    if not 0 < lease_s <= MAX_LEASE_S:
        raise InvalidRequest(f"lease_s must be in (0, {MAX_LEASE_S:g}] seconds, got {lease_s:g}")


def export_for_handoff(fragment: Fragment, seq_id: str) -> torch.Tensor:
    if not fragment.has_sequence(seq_id):
        raise NotFound(f"no sequence {seq_id!r} on fragment '{fragment.spec.fragment_id}' to hand off")
    return export_kv(fragment, seq_id)


def receive_kv(fragment: Fragment, seq_id: str, kv: torch.Tensor) -> int:
    """Starts `seq_id` holding `kv`; checks everything first, so a refused import changes nothing."""
    where = f"ImportKV of sequence {seq_id!r} on fragment '{fragment.spec.fragment_id}'"
    if not seq_id:
        raise InvalidRequest("ImportKV needs the seq_id of the sequence it starts")
    if fragment.has_sequence(seq_id):
        raise AlreadyExists(f"{where}: the sequence exists already; release it first")
    tokens = kv.shape[2] if kv.dim() == 5 else 0
    expected = kv_shape(fragment, tokens)
    if tokens < 1 or tuple(kv.shape) != expected or kv.dtype != fragment.dtype:
        dtype = str(fragment.dtype).removeprefix("torch.")
        raise InvalidRequest(f"{where}: kv must be [layers, 2, tokens >= 1, kv_heads, head_dim] = {list(expected)} "
                             f"in {dtype}, got {list(kv.shape)} {str(kv.dtype).removeprefix('torch.')}")
    if tokens > fragment.info.max_context:
        raise InvalidRequest(f"{where}: {tokens} tokens exceed the context limit of {fragment.info.max_context}")
    needed, free = -(-tokens // fragment.kv.block_size), fragment.fresh_blocks
    if needed > free:
        raise ResourceExhausted(f"{where}: {needed} KV blocks needed, {free} free")
    import_kv(fragment, seq_id, kv)
    return tokens


def failed(error: GenieError | BaseException, tokens: int, nbytes: int, started: float) -> Handoff:
    return Handoff(False, str(error) or type(error).__name__, tokens, nbytes, time.perf_counter() - started)
