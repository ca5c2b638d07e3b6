"""Blind mode: steps whose sequences carry their whole KV cache in and out on every call.

This is how a remote-device layer that does not know what a KV cache is has to run a decoder: the state
lives with the caller and crosses the wire both ways each step. genie-serve never does this; it exists so
that `genie-bench compare` can measure that baseline on the very same worker and engine.

A sequence with `kv` (or `return_kv`) runs on a temporary sequence of the fragment: its KV
[layers, 2, tokens, kv_heads, head_dim] is written into fresh blocks, the step runs, the updated KV is read
back when asked for, and the temporary sequence is released whatever happens.
"""

from __future__ import annotations

import uuid

import torch

from genie.errors import InvalidRequest, ResourceExhausted
from genie.workers.engine.fragment import Fragment
from genie.workers.blind import BlindSeqResult, BlindSeqStep, is_blind
from genie.workers.contract import SeqResult, SeqStep

TEMP_PREFIX = "blind-kv/"


def step_with_kv(fragment: Fragment, seqs: list[SeqStep]) -> list[SeqResult]:
    """`fragment.step`, except that sequences carrying KV run on temporary sequences (see the module doc).
    Pinned sequences in the same batch behave exactly as in `fragment.step`."""
    blind = [i for i, seq in enumerate(seqs) if is_blind(seq)]
    if not blind:
        return fragment.step(seqs)
    _check_unique(seqs)
    for i in blind:
        check_kv(fragment, seqs[i])
    _check_room(fragment, [seqs[i] for i in blind])
    temps = {i: f"{TEMP_PREFIX}{uuid.uuid4().hex}" for i in blind}
    try:
        for i, temp in temps.items():
            if seqs[i].kv is not None and seqs[i].position > 0:
                import_kv(fragment, temp, seqs[i].kv)
        stepped = [seq.plain(temps[i]) if i in temps else seq for i, seq in enumerate(seqs)]  # type: ignore[attr-defined]
        results = fragment.step(stepped)
        for i, temp in temps.items():
            blind: BlindSeqStep = seqs[i]  # type: ignore[assignment]
            kv = export_kv(fragment, temp) if blind.return_kv else None
            results[i] = BlindSeqResult.of(results[i], blind.seq_id, kv)
    finally:
        fragment.release(temps.values())
    return results


def kv_shape(fragment: Fragment, tokens: int) -> tuple[int, int, int, int, int]:
    """[layers, 2, tokens, kv_heads, head_dim] of a sequence's KV on this fragment."""
    kv_heads, _, head_dim = fragment.kv.keys[0].shape  # the cache is head-major: [kv_heads, slots, head_dim]
    return (len(fragment.kv.keys), 2, tokens, kv_heads, head_dim)


def check_kv(fragment: Fragment, seq: SeqStep) -> None:
    where = f"sequence '{seq.seq_id}'"
    if seq.sampling.counts_tokens:
        # Penalties count the ids a sequence holds, and a blind step brings only its new ones.
        raise InvalidRequest(f"{where}: penalties need the sequence's token ids, which a blind step does not carry")
    kv = seq.kv
    if kv is None:
        if seq.position != 0:
            raise InvalidRequest(
                f"{where} asks for return_kv at position {seq.position} but brings no kv; a blind sequence "
                "sends its whole KV with every step after the first (which starts at position 0)"
            )
        return
    dtype = str(fragment.dtype).removeprefix("torch.")
    expected = kv_shape(fragment, seq.position)
    if not isinstance(kv, torch.Tensor) or tuple(kv.shape) != expected or kv.dtype != fragment.dtype:
        got = type(kv).__name__
        if isinstance(kv, torch.Tensor):
            got = f"{list(kv.shape)} {str(kv.dtype).removeprefix('torch.')}"
        raise InvalidRequest(
            f"{where}: kv must be [layers, 2, position, kv_heads, head_dim] = {list(expected)} in {dtype} on "
            f"fragment '{fragment.spec.fragment_id}', got {got}; send the kv the previous step returned"
        )
    if seq.position + seq.num_tokens > fragment.info.max_context:
        raise InvalidRequest(
            f"{where}: {seq.position + seq.num_tokens} tokens exceed the context limit of "
            f"{fragment.info.max_context} on fragment '{fragment.spec.fragment_id}'"
        )


def import_kv(fragment: Fragment, seq_id: str, kv: torch.Tensor, prefix: tuple[bytes, ...] = (),
              new_hashes: tuple[bytes, ...] = ()) -> None:
    """Starts `seq_id` holding kv [layers, 2, tokens, kv_heads, head_dim], after the cached blocks `prefix`
    when given, naming the full blocks kv fills `new_hashes`; the caller checked shape, names and room."""
    start = len(prefix) * fragment.kv.block_size
    end = start + kv.shape[2]
    fragment.reserve(seq_id, end, prefix, new_hashes)
    slots = fragment.kv_slots(seq_id, end)[start:]
    kv = kv.to(fragment.device)
    for layer, (keys, values) in enumerate(zip(fragment.kv.keys, fragment.kv.values, strict=True)):
        keys.index_copy_(1, slots, kv[layer, 0].transpose(0, 1))  # [tokens, kv_heads, D] -> [kv_heads, tokens, D]
        values.index_copy_(1, slots, kv[layer, 1].transpose(0, 1))


def export_kv(fragment: Fragment, seq_id: str, start: int = 0) -> torch.Tensor:
    """The KV `seq_id` holds from token `start` on (all of it by default), as a CPU tensor
    [layers, 2, tokens, kv_heads, head_dim]."""
    slots = fragment.kv_slots(seq_id, fragment.kv_length(seq_id))[start:]
    per_layer = [
        torch.stack((keys.index_select(1, slots), values.index_select(1, slots)))  # [2, kv_heads, tokens, D]
        for keys, values in zip(fragment.kv.keys, fragment.kv.values, strict=True)
    ]
    return torch.stack(per_layer).transpose(2, 3).contiguous().cpu()


def _check_unique(seqs: list[SeqStep]) -> None:
    seen: set[str] = set()
    for seq in seqs:
        if seq.seq_id in seen:
            raise InvalidRequest(f"sequence '{seq.seq_id}' appears twice in one step; send each sequence once")
        seen.add(seq.seq_id)


def _check_room(fragment: Fragment, blind: list[SeqStep]) -> None:
    size = fragment.kv.block_size
    needed = sum(-(-(seq.position + seq.num_tokens) // size) for seq in blind)
    free = fragment.fresh_blocks  # blind steps never start from cached blocks
    if needed > free:
        raise ResourceExhausted(
            f"KV cache of fragment '{fragment.spec.fragment_id}' is full: the blind sequences of this step need "
            f"{needed} blocks of {size} tokens and {free} are free; send fewer sequences per step"
        )
