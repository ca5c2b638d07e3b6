"""Picks the next token from one row of logits: greedy, temperature, top-k, top-p; seeded draws; logprobs.
Logits processing (penalties, logit_bias, min_tokens) lives in `logits_processors.py`.

A seeded draw depends only on (seed, position of the sampled token): each draw gets its own generator seeded
from a hash of the two. A request that is preempted and recomputed, or batched with different neighbours,
therefore draws the same random number for the same token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from genie.workers.contract import SamplingParams
from genie.workers.engine.guides import apply_masks
from genie.workers.engine.logits_processors import process_logits


@dataclass(frozen=True, slots=True)
class Sampled:
    token_id: int
    logprob: float | None
    top: list[tuple[int, float]]


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    positions: list[int],
    rng: torch.Generator,
    greedy_ids: list[int] | None = None,
    histories: list[list[int]] | None = None,
    guide_masks: dict[int, torch.Tensor] | None = None,
) -> list[Sampled]:
    """logits: [S, vocab] in any dtype and on any device; positions[i] is where row i's token will sit in its
    sequence; greedy_ids: each row's argmax when the caller has it; histories[i]: the ids row i's sequence
    holds, for rows whose params count tokens (penalties); guide_masks: row index -> int32 token bitmask of
    the guided rows (guides.py), applied after the processing, so greedy takes the argmax of the masked row.
    Rows that need more than the argmax are copied to the CPU in float32 one by one, so a greedy batch never
    converts its logits; rows with logits processing (penalties, logit_bias, min_tokens, a guide) are
    processed together first, and only they."""
    if greedy_ids is None:
        greedy_ids = logits.argmax(dim=-1).tolist()
    processed, greedy_ids = _process(logits, params, positions, histories, greedy_ids, guide_masks or {})
    out = []
    for i, (p, pos, greedy_id) in enumerate(zip(params, positions, greedy_ids)):
        row = processed.get(i)
        if p.greedy and not p.logprobs:
            out.append(Sampled(greedy_id, None, []))
        else:
            row = logits[i].float() if row is None else row
            out.append(_sample_row(row.cpu(), p, pos, rng, greedy_id))
    return out


def _process(
    logits: torch.Tensor,
    params: list[SamplingParams],
    positions: list[int],
    histories: list[list[int]] | None,
    greedy_ids: list[int],
    guide_masks: dict[int, torch.Tensor],
) -> tuple[dict[int, torch.Tensor], list[int]]:
    """Row index -> its processed float32 logits [vocab] for the rows that ask for processing or are guided,
    and every row's argmax with those rows' taken after processing."""
    picked = [i for i, p in enumerate(params) if p.processes_logits or i in guide_masks]
    if not picked:
        return {}, greedy_ids
    rows = logits.index_select(0, torch.tensor(picked, device=logits.device)).float()
    done = process_logits(
        rows,
        [params[i] for i in picked],
        [positions[i] for i in picked],
        [histories[i] if histories is not None else [] for i in picked],
    )
    guided = [j for j, i in enumerate(picked) if i in guide_masks]
    if guided:
        index = torch.tensor(guided, device=done.device)
        # only min_tokens sets a logit to -inf before the mask (penalties keep every logit finite)
        stops = any(params[picked[j]].min_tokens > 0 for j in guided)
        done[index] = apply_masks(done[index], [guide_masks[picked[j]] for j in guided], may_hold_inf=stops)
    greedy_ids = list(greedy_ids)
    for i, best in zip(picked, done.argmax(dim=-1).tolist()):
        greedy_ids[i] = best
    return dict(zip(picked, done.unbind(0))), greedy_ids


def draw_seed(seed: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _sample_row(
    logits: torch.Tensor, p: SamplingParams, position: int, rng: torch.Generator, greedy_id: int
) -> Sampled:
    if p.greedy:
        token = greedy_id
        logprobs = torch.log_softmax(logits, dim=-1)
    else:
        scaled = logits / p.temperature
        if not torch.isfinite(scaled.max()):
            # A temperature near 0 (1e-45, say) overflows float32 to inf and softmax to nan; shifted by the
            # max first, the best logit stays 0 and the others may only fall to -inf.
            scaled = (logits - logits.max()) / p.temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        probs = torch.softmax(_filter(scaled, p.top_k, p.top_p), dim=-1)
        generator = rng if p.seed is None else torch.Generator().manual_seed(draw_seed(p.seed, position))
        token = int(torch.multinomial(probs, 1, generator=generator))
    if not p.logprobs:
        return Sampled(token, None, [])
    values, ids = logprobs.topk(min(p.logprobs, logprobs.numel()))
    return Sampled(token, float(logprobs[token]), list(zip(ids.tolist(), values.tolist())))


def _filter(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Sets every logit outside the top-k and outside the smallest set with probability >= top_p to -inf."""
    if 0 < top_k < scaled.numel():
        kth = scaled.topk(top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scaled.sort(descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the better tokens; the first token always stays
        drop = torch.zeros_like(scaled, dtype=torch.bool).scatter_(0, order, before >= top_p)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled
