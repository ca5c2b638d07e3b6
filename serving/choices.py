"""n > 1: the choices of one request, run as n sequences that share its prompt (not its KV: each choice
prefills the prompt itself) and stream into one Submission, each delta tagged with its choice's index.

A seeded request gives each choice its own seed, derived from the request's, so the choices differ from one
another and a request repeated with the same seed repeats every choice; choice 0 keeps the seed itself, so
n=1 and choice 0 of n=3 are the same text. The front doors' one-choice formats (`responses.py`) are turned
into n-choice bodies and chunks by `whole_body`, `first_chunks` and `chunk_body`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Protocol

from genie.workers.contract import SamplingParams

if TYPE_CHECKING:
    from .submission import Delta, Submission

MAX_CHOICES = 16  # choices one request may ask for (each runs as a sequence of its own)
_MEMBER = "-c"  # request id + this + index names a choice's sequence on the workers


def choice_seed(seed: int, index: int) -> int:
    """Choice 0 keeps the seed; the others get a 63-bit hash of (seed, index)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"choice:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    if sampling.seed is None or index == 0:
        return sampling
    return dataclasses.replace(sampling, seed=choice_seed(sampling.seed, index))


def member_ids(request_id: str, n: int) -> list[str]:
    """The sequence id of each choice: the request id itself for a single choice."""
    return [request_id] if n == 1 else [f"{request_id}{_MEMBER}{i}" for i in range(n)]


def is_member_of(seq_id: str, request_id: str) -> bool:
    return seq_id.startswith(request_id + _MEMBER)


class _Format(Protocol):
    def whole(self, text: str, deltas: list[Delta], sub: Submission) -> dict[str, Any]: ...
    def first_chunk(self) -> dict[str, Any] | None: ...
    def chunk(self, delta: Delta) -> dict[str, Any]: ...
    def chunks(self, delta: Delta) -> list[dict[str, Any]]: ...


def whole_body(fmt: _Format, prefix: str, deltas: list[Delta], sub: Submission) -> dict[str, Any]:
    """The whole response of every choice: fmt's one-choice body with choices[i] for i in range(n); usage
    counts the prompt once and the tokens of all choices (OpenAI's)."""
    by_index: dict[int, list[Delta]] = {}
    for delta in deltas:
        by_index.setdefault(delta.index, []).append(delta)
    bodies = [fmt.whole(prefix + "".join(d.text for d in ds), ds, sub) for _, ds in sorted(by_index.items())]
    body = bodies[0]
    body["choices"] = [b["choices"][0] | {"index": i} for i, b in zip(sorted(by_index), bodies)]
    return body


def first_chunks(fmt: _Format, n: int) -> list[dict[str, Any]]:
    """fmt's opening chunk (the assistant role, for chat) once per choice."""
    first = fmt.first_chunk()
    return [] if first is None else [_indexed(first, i) for i in range(n)]


def chunk_body(fmt: _Format, delta: Delta) -> dict[str, Any]:
    return _indexed(fmt.chunk(delta), delta.index)


def chunk_bodies(fmt: _Format, delta: Delta) -> list[dict[str, Any]]:
    """Every chunk fmt sends for one delta (several when it parses tool calls), tagged with its choice."""
    return [_indexed(body, delta.index) for body in fmt.chunks(delta)]


def _indexed(body: dict[str, Any], index: int) -> dict[str, Any]:
    if all(c.get("index") == index for c in body["choices"]):  # n = 1: every chunk of a stream, as it is
        return body
    return body | {"choices": [c | {"index": index} for c in body["choices"]]}
