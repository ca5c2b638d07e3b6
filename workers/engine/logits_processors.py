"""Logits processing before a draw: logit_bias, min_tokens, and the repetition, frequency and presence penalties.

All of it runs batched over the rows that ask for any of it (a few kernels whatever their number); rows that ask
for none never come here. Penalty counts are derived from the token ids a sequence holds in this fragment
(`TokenHistory`), never kept apart from them: a sequence preempted or migrated is prefilled again from
prompt + output, which rebuilds its counts exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from genie.workers.contract import SamplingParams, SeqStep


class TokenHistory:
    """The token ids each penalised sequence holds in this fragment, by seq id (only those sequences).

    A step at position p keeps the first p ids and appends the step's own, so a step that failed and is sent
    again, or a sequence prefilled again from 0, ends with exactly the ids its KV holds."""

    def __init__(self) -> None:
        self._ids: dict[str, list[int]] = {}

    def record(self, seqs: list[SeqStep]) -> None:
        for seq in seqs:
            if seq.sampling.counts_tokens and seq.token_ids is not None:
                ids = self._ids.setdefault(seq.seq_id, [])
                del ids[seq.position :]
                ids.extend(seq.token_ids)

    def get(self, seq_id: str) -> list[int]:
        return self._ids.get(seq_id, [])

    def forget(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            self._ids.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self._ids)


def process_logits(
    logits: torch.Tensor, params: list[SamplingParams], positions: list[int], histories: list[list[int]]
) -> torch.Tensor:
    """logits: [P, vocab] float32, one row per sequence that asks for processing, changed in place and
    returned; positions[i]: where row i's token will sit; histories[i]: the ids at positions
    0..positions[i]-1 (empty when row i counts nothing). Bias first, then the min_tokens mask, then the
    penalties (vLLM's order)."""
    _add_bias(logits, params)
    _mask_stops(logits, params, positions)
    counting = [i for i, p in enumerate(params) if p.counts_tokens and histories[i]]
    if counting:
        _penalise(logits, counting, [params[i] for i in counting], [histories[i] for i in counting])
    return logits


def _add_bias(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    rows = [i for i, p in enumerate(params) for _ in p.logit_bias]
    if rows:
        cols = [token for p in params for token, _ in p.logit_bias]
        bias = torch.tensor([value for p in params for _, value in p.logit_bias], device=logits.device)
        logits.index_put_((_longs(rows, logits), _longs(cols, logits)), bias, accumulate=True)


def _mask_stops(logits: torch.Tensor, params: list[SamplingParams], positions: list[int]) -> None:
    """Sets the stop ids of rows that have fewer than min_tokens output tokens to -inf."""
    early = [(i, p) for i, (p, pos) in enumerate(zip(params, positions)) if pos - p.prompt_len < p.min_tokens]
    rows = [i for i, p in early for _ in p.stop_ids]
    if rows:
        cols = [token for _, p in early for token in p.stop_ids]
        logits.index_put_((_longs(rows, logits), _longs(cols, logits)), torch.tensor(float("-inf")))


def _penalise(logits: torch.Tensor, rows: list[int], params: list[SamplingParams], histories: list[list[int]]) -> None:
    """Repetition over prompt + output, then frequency and presence over the output, of rows `rows`.

    Only the logits of tokens the sequence holds change, so the work is gathered there: ids [C, L] (each
    row padded with its own first id, whose value it writes again) instead of the whole [C, vocab]."""
    width = max(len(h) for h in histories)
    ids = _longs([h + [h[0]] * (width - len(h)) for h in histories], logits)  # [C, L]
    index = _longs(rows, logits)
    values = logits[index[:, None], ids]  # [C, L]
    rep = _column([p.repetition_penalty for p in params], logits)
    values = torch.where(values > 0, values / rep, values * rep)
    counts = _output_counts(ids, [p.prompt_len for p in params], [len(h) for h in histories])  # [C, L]
    values -= counts * _column([p.frequency_penalty for p in params], logits)
    values -= (counts > 0).float() * _column([p.presence_penalty for p in params], logits)
    # a penalty near 0 (the door allows (0, 2]) divides a logit into inf: keep every logit finite, so that the
    # draw (a softmax) never meets inf - inf, and one request's extreme value never fails the batch's step
    big = torch.finfo(values.dtype).max
    values = torch.nan_to_num(values, nan=0.0, posinf=big, neginf=-big)
    logits[index[:, None], ids] = values  # duplicates of an id carry the same value


def _output_counts(ids: torch.Tensor, prompt_lens: list[int], lengths: list[int]) -> torch.Tensor:
    """[C, L] float32: how often ids[c, j] occurs among row c's output positions [prompt_len, length)."""
    pos = torch.arange(ids.shape[1], device=ids.device)
    start = torch.tensor(prompt_lens, device=ids.device)[:, None]
    end = torch.tensor(lengths, device=ids.device)[:, None]
    is_output = ((pos >= start) & (pos < end)).float()  # [C, L]
    # Count per row with a scatter into the row's own id space: the sort keeps it [C, L], not [C, vocab].
    order = ids.argsort(dim=1, stable=True)
    sorted_ids = ids.gather(1, order)
    sorted_out = is_output.gather(1, order)
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # [C, L]: which run of equal ids each sorted slot is in
    per_group = torch.zeros_like(sorted_out).scatter_add_(1, group, sorted_out)
    counts_sorted = per_group.gather(1, group)
    return torch.empty_like(counts_sorted).scatter_(1, order, counts_sorted)


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=like.device)[:, None]


def _longs(values: list, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=like.device)
