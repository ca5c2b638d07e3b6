"""Checks a whole step before any state changes, so a refused step leaves every sequence as it was."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genie.errors import InvalidRequest, NotFound, ResourceExhausted
from genie.workers.engine.block_tables import BlockTables
from genie.workers.contract import GUIDE_KINDS, SamplingParams, SeqStep

HIDDEN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class Limits:
    fragment_id: str
    has_embedding: bool
    has_head: bool
    hidden_size: int
    vocab_size: int
    max_context: int


def validate_step(seqs: list[SeqStep], limits: Limits, tables: BlockTables) -> None:
    if not seqs:
        raise InvalidRequest(f"a step on fragment '{limits.fragment_id}' needs at least one sequence")
    seen: set[str] = set()
    needed = 0
    for seq in seqs:
        if not isinstance(seq.seq_id, str) or not seq.seq_id:
            raise InvalidRequest(f"seq_id must be a non-empty string, got {seq.seq_id!r}")
        if seq.seq_id in seen:
            raise InvalidRequest(f"sequence '{seq.seq_id}' appears twice in one step; send each sequence once")
        seen.add(seq.seq_id)
        _check_inputs(seq, limits)
        _check_sampling(seq, limits)
        _check_position(seq, limits, tables)
        _check_hashes(seq, limits, tables)
        needed += tables.blocks_needed(seq.seq_id, seq.position + seq.num_tokens, len(seq.cached_prefix))
    free = tables.allocator.num_free
    if needed > free:
        raise ResourceExhausted(
            f"KV cache of fragment '{limits.fragment_id}' is full: this step needs {needed} more blocks of "
            f"{tables.block_size} tokens and {free} are free; release finished sequences or retry with fewer"
        )


def _check_inputs(seq: SeqStep, limits: Limits) -> None:
    where = f"sequence '{seq.seq_id}'"
    if limits.has_embedding:
        if seq.token_ids is None or seq.hidden is not None:
            raise InvalidRequest(
                f"{where}: fragment '{limits.fragment_id}' holds the embedding; send token_ids, not hidden"
            )
        _check_token_ids(seq.token_ids, where, limits.vocab_size)
    else:
        # The head of a pipeline takes the ids beside the hidden states when its penalties count them or a
        # guide follows them.
        counted = limits.has_head and isinstance(seq.sampling, SamplingParams) and (
            seq.sampling.counts_tokens or seq.sampling.guided)
        if seq.hidden is None or (seq.token_ids is not None and not counted):
            raise InvalidRequest(
                f"{where}: fragment '{limits.fragment_id}' starts mid-model; send hidden states "
                "[n, hidden_size] from the previous fragment, not token_ids"
            )
        _check_hidden(seq.hidden, where, limits.hidden_size)
        if seq.token_ids is not None:
            _check_token_ids(seq.token_ids, where, limits.vocab_size)
            if len(seq.token_ids) != seq.hidden.shape[0]:
                raise InvalidRequest(
                    f"{where}: {len(seq.token_ids)} token_ids beside {seq.hidden.shape[0]} hidden rows; "
                    "send the ids of the same tokens"
                )
    if seq.num_tokens == 0:
        raise InvalidRequest(f"{where}: empty chunk; a step must bring at least one token")


def _check_token_ids(ids: list[int], where: str, vocab: int) -> None:
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise InvalidRequest(f"{where}: token_ids must be a list of ints")
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequest(f"{where}: token id {bad} is outside the vocabulary [0, {vocab})")


def _check_hidden(hidden: object, where: str, hidden_size: int) -> None:
    if not isinstance(hidden, torch.Tensor):
        raise InvalidRequest(f"{where}: hidden must be a tensor, got {type(hidden).__name__}")
    if hidden.dim() != 2 or hidden.shape[1] != hidden_size:
        raise InvalidRequest(f"{where}: hidden must have shape [n, {hidden_size}], got {list(hidden.shape)}")
    if hidden.dtype not in HIDDEN_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in HIDDEN_DTYPES)
        raise InvalidRequest(f"{where}: hidden dtype {str(hidden.dtype).removeprefix('torch.')} is not one of {names}")


def _check_sampling(seq: SeqStep, limits: Limits) -> None:
    where = f"sequence '{seq.seq_id}'"
    if seq.sample and not limits.has_head:
        raise InvalidRequest(
            f"{where}: sample=True but fragment '{limits.fragment_id}' does not hold the head; "
            "sample on the last fragment"
        )
    p = seq.sampling
    if not isinstance(p, SamplingParams):
        raise InvalidRequest(f"{where}: sampling must be SamplingParams, got {type(p).__name__}")
    if not (math.isfinite(p.temperature) and p.temperature >= 0):
        raise InvalidRequest(f"{where}: temperature must be a finite number >= 0 (0 is greedy), got {p.temperature}")
    if p.top_k < 0:
        raise InvalidRequest(f"{where}: top_k must be >= 0 (0 disables it), got {p.top_k}")
    if not 0 < p.top_p <= 1:
        raise InvalidRequest(f"{where}: top_p must be in (0, 1] (1 disables it), got {p.top_p}")
    if not 0 <= p.logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"{where}: logprobs must be between 0 and {MAX_LOGPROBS}, got {p.logprobs}")
    if p.processes_logits:
        _check_processing(p, where, limits.vocab_size)
    if p.guide_kind or p.guide_spec:
        _check_guide(p, where)


def _check_guide(p: SamplingParams, where: str) -> None:
    """The shape of a guide; whether it compiles is the guide compiler's to say (guides.py)."""
    if p.guide_kind not in GUIDE_KINDS:
        raise InvalidRequest(f"{where}: guide_kind must be one of {', '.join(GUIDE_KINDS)} (or empty), "
                             f"got {p.guide_kind!r}")
    if not isinstance(p.guide_spec, str) or (not p.guide_spec and p.guide_kind != "json"):
        raise InvalidRequest(f"{where}: a {p.guide_kind} guide needs its guide_spec text")


def _check_processing(p: SamplingParams, where: str, vocab: int) -> None:
    for name in ("frequency_penalty", "presence_penalty", "repetition_penalty"):
        if not math.isfinite(getattr(p, name)):
            raise InvalidRequest(f"{where}: {name} must be a finite number, got {getattr(p, name)}")
    if p.repetition_penalty <= 0:
        raise InvalidRequest(f"{where}: repetition_penalty must be > 0 (1 disables it), got {p.repetition_penalty}")
    if not all(math.isfinite(bias) for _, bias in p.logit_bias):
        raise InvalidRequest(f"{where}: logit_bias values must be finite numbers")
    for name, ids in (("logit_bias", [t for t, _ in p.logit_bias]), ("stop_ids", list(p.stop_ids))):
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest(f"{where}: {name} names token id {bad}, outside the vocabulary [0, {vocab})")
    if p.min_tokens < 0 or p.prompt_len < 0:
        raise InvalidRequest(f"{where}: min_tokens and prompt_len must be >= 0")


def _check_position(seq: SeqStep, limits: Limits, tables: BlockTables) -> None:
    where = f"sequence '{seq.seq_id}'"
    held = tables.length(seq.seq_id)
    if not isinstance(seq.position, int) or seq.position < 0:
        raise InvalidRequest(f"{where}: position must be an int >= 0, got {seq.position!r}")
    if held is None and seq.position > 0 and not seq.cached_prefix:
        raise NotFound(
            f"unknown sequence '{seq.seq_id}' on fragment '{limits.fragment_id}'; "
            "it was released or never started at position 0"
        )
    if held is not None and seq.position != held:
        raise InvalidRequest(
            f"{where} holds {held} tokens on fragment '{limits.fragment_id}' but the step says position "
            f"{seq.position}; continue at {held}, or release it and start again at 0"
        )
    end = seq.position + seq.num_tokens
    if end > limits.max_context:
        raise InvalidRequest(
            f"{where}: {end} tokens exceed the context limit of {limits.max_context} on fragment "
            f"'{limits.fragment_id}'; shorten the prompt or max_tokens"
        )


def _check_hashes(seq: SeqStep, limits: Limits, tables: BlockTables) -> None:
    """A cached prefix starts a new sequence exactly at its end; new_block_hashes name exactly the blocks filled."""
    where = f"sequence '{seq.seq_id}'"
    size = tables.block_size
    if seq.cached_prefix:
        if seq.seq_id in tables:
            raise InvalidRequest(f"{where} already holds KV; a cached prefix can only start a new sequence")
        if seq.position != len(seq.cached_prefix) * size:
            raise InvalidRequest(
                f"{where}: {len(seq.cached_prefix)} cached prefix blocks hold {len(seq.cached_prefix) * size} "
                f"tokens but the step says position {seq.position}"
            )
        if seq.sampling.counts_tokens:
            raise InvalidRequest(
                f"{where}: its penalties count every token it holds, so it must bring them all; "
                "send it without a cached prefix"
            )
        if seq.sampling.guided and seq.position > seq.sampling.prompt_len:
            raise InvalidRequest(
                f"{where}: a guided sequence rebuilds its guide from its output tokens, so its cached prefix may "
                f"not reach past its prompt ({seq.sampling.prompt_len} tokens)"
            )
        missing = tables.missing(seq.cached_prefix)
        if missing:
            raise InvalidRequest(
                f"{where}: {len(missing)} of its {len(seq.cached_prefix)} cached prefix blocks are not cached on "
                f"fragment '{limits.fragment_id}' (evicted, or never computed here); send the whole prompt"
            )
    if seq.new_block_hashes:
        filled = (seq.position + seq.num_tokens) // size - seq.position // size
        if len(seq.new_block_hashes) != filled:
            raise InvalidRequest(
                f"{where}: the step fills {filled} KV blocks but names {len(seq.new_block_hashes)}"
            )
