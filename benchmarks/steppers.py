"""What one step of `run_streams` means for each system that bypasses the router.

- `PinnedStepper`: the KV stays where the step runs (our engine in-process, or a worker process), as in
  genie-serve; a step sends only the new tokens.
- `BlindKVStepper`: the worker keeps nothing; each sequence's whole KV goes to the worker with every step
  and comes back updated, as a remote-device layer that does not know what a KV cache is must do.
- `BlindRecomputeStepper`: no KV is kept anywhere; every step re-runs the whole context as a fresh prefill.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence

from genie.workers.client import WorkerClient
from genie.workers.blind import BlindSeqStep
from genie.workers.contract import SeqResult, SeqStep

from .streams import Stream

StepFn = Callable[[list[SeqStep]], Awaitable[list[SeqResult]]]
ReleaseFn = Callable[[list[str]], Awaitable[object]]

# Keeps each blind-kv request well under the 256 MiB gRPC message cap of workers and clients.
MAX_KV_BYTES_PER_REQUEST = 96 << 20


def _tokens(results: Sequence[SeqResult]) -> list[int]:
    tokens = [r.token_id for r in results]
    if any(t is None for t in tokens):
        raise RuntimeError("the worker returned a result without a sampled token")
    return tokens  # type: ignore[return-value]


class PinnedStepper:
    def __init__(self, step: StepFn, release: ReleaseFn) -> None:
        self._step = step
        self._release = release

    @classmethod
    def on_worker(cls, client: WorkerClient, fragment_id: str) -> PinnedStepper:
        return cls(lambda seqs: client.step(fragment_id, seqs), lambda ids: client.release(fragment_id, ids))

    async def step(self, streams: list[Stream]) -> list[int]:
        seqs = [SeqStep(s.seq_id, s.fed, token_ids=s.pending, sample=True) for s in streams]
        tokens = _tokens(await self._step(seqs))
        for stream in streams:
            stream.fed = len(stream.prompt) + len(stream.generated)
        return tokens

    async def finish(self, streams: list[Stream]) -> None:
        await self._release([s.seq_id for s in streams])


class BlindKVStepper:
    def __init__(self, client: WorkerClient, fragment_id: str, max_kv_bytes: int = MAX_KV_BYTES_PER_REQUEST) -> None:
        self._client = client
        self._fragment_id = fragment_id
        self._max_kv_bytes = max_kv_bytes

    async def step(self, streams: list[Stream]) -> list[int]:
        seqs = [BlindSeqStep(s.seq_id, s.fed, token_ids=s.pending, sample=True, kv=s.state, return_kv=True)
                for s in streams]
        results: list[SeqResult] = []
        for chunk in _chunks(seqs, self._max_kv_bytes):
            results.extend(await self._client.step(self._fragment_id, chunk))
        for stream, result in zip(streams, results, strict=True):
            stream.state = result.kv
            stream.fed = len(stream.prompt) + len(stream.generated)
        return _tokens(results)

    async def finish(self, streams: list[Stream]) -> None:
        for stream in streams:
            stream.state = None  # the worker holds nothing of theirs


class BlindRecomputeStepper:
    def __init__(self, client: WorkerClient, fragment_id: str) -> None:
        self._client = client
        self._fragment_id = fragment_id
        self._steps = 0

    async def step(self, streams: list[Stream]) -> list[int]:
        self._steps += 1
        ids = [f"{s.seq_id}/{self._steps}" for s in streams]
        seqs = [SeqStep(sid, 0, token_ids=s.context, sample=True) for sid, s in zip(ids, streams, strict=True)]
        try:
            return _tokens(await self._client.step(self._fragment_id, seqs))
        finally:
            await self._client.release(self._fragment_id, ids)

    async def finish(self, streams: list[Stream]) -> None:
        return None


def _chunks(seqs: list[BlindSeqStep], max_bytes: int) -> Iterator[list[BlindSeqStep]]:
    """Consecutive groups whose KV stays under `max_bytes` (a single larger sequence goes alone)."""
    chunk: list[BlindSeqStep] = []
    size = 0
    for seq in seqs:
        nbytes = 0 if seq.kv is None else seq.kv.numel() * seq.kv.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(seq)
        size += nbytes
    if chunk:
        yield chunk
