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


def check_send(seq_id: str, target: str, lease_s: float, skip_tokens: int = 0) -> None:
    if not seq_id:
        raise InvalidRequest("SendKV needs the seq_id of the sequence to hand off")
    if not target:
        raise InvalidRequest("SendKV needs a target worker address (host:port)")
    if not 0 < lease_s <= MAX_LEASE_S:
        raise InvalidRequest(f"lease_s must be in (0, {MAX_LEASE_S:g}] seconds, got {lease_s:g}")
    if skip_tokens < 0:
        raise InvalidRequest(f"skip_tokens must be >= 0, got {skip_tokens}")


def export_for_handoff(fragment: Fragment, seq_id: str, skip_tokens: int = 0, prefix_blocks: int = 0) -> torch.Tensor:
    """The KV to send: all `seq_id` holds but its first `skip_tokens`, which the receiver holds cached as
    `prefix_blocks` blocks (of this fragment's block size, which the receiver shares)."""
    where = f"fragment '{fragment.spec.fragment_id}'"
    if not fragment.has_sequence(seq_id):
        raise NotFound(f"no sequence {seq_id!r} on {where} to hand off")
    length, size = fragment.kv_length(seq_id), fragment.kv.block_size
    if skip_tokens != prefix_blocks * size or skip_tokens >= length:
        raise InvalidRequest(f"skip_tokens must be the {prefix_blocks} cached prefix blocks x {size} tokens, below the "
                             f"{length} tokens sequence {seq_id!r} holds on {where}; got {skip_tokens}")
    return export_kv(fragment, seq_id, skip_tokens)


def receive_kv(fragment: Fragment, seq_id: str, kv: torch.Tensor, prefix: tuple[bytes, ...] = (),
               new_hashes: tuple[bytes, ...] = ()) -> int:
    """Starts `seq_id` from the cached blocks `prefix` (none by default) followed by `kv`, naming the full blocks
    kv fills `new_hashes`; checks everything first, so a refused import changes nothing. Returns kv's tokens."""
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
    size = fragment.kv.block_size
    start = len(prefix) * size
    if start + tokens > fragment.info.max_context:
        raise InvalidRequest(f"{where}: {start + tokens} tokens exceed the context limit of {fragment.info.max_context}")
    missing = fragment.cached_missing(prefix)
    if missing:
        raise InvalidRequest(f"{where}: {len(missing)} of the {len(prefix)} prefix blocks are not cached here")
    if len(new_hashes) > tokens // size:
        raise InvalidRequest(f"{where}: {len(new_hashes)} block names for {tokens // size} full blocks of KV")
    needed, free = -(-(start + tokens) // size) - len(prefix), fragment.fresh_blocks
    if needed > free:
        raise ResourceExhausted(f"{where}: {needed} KV blocks needed, {free} free")
    import_kv(fragment, seq_id, kv, prefix, new_hashes)
    return tokens


def failed(error: GenieError | BaseException, tokens: int, nbytes: int, started: float) -> Handoff:
    return Handoff(False, str(error) or type(error).__name__, tokens, nbytes, time.perf_counter() - started)
