"""Drivers shared by the engine tests: run prompts through one or more fragments, and the HF reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from genie.errors import InvalidRequest
from genie.workers.engine import Fragment, SamplingParams, SeqResult, SeqStep
from genie.workers.engine.native import native_ops


@pytest.fixture(params=["torch", "native"])
def kernels(request) -> str:
    """Runs a test on both kernel sets; "native" is skipped where the kernels cannot be built (no g++)."""
    if request.param == "native":
        try:
            native_ops(torch.device("cpu"))
        except InvalidRequest as exc:
            pytest.skip(f"native kernels unavailable here: {exc}")
    return request.param


@dataclass
class Pipeline:
    """Fragments in model order; the first holds the embedding, the last the head. Hidden states go between."""

    fragments: list[Fragment]

    def step(self, items: list[tuple[str, int, list[int], bool]], sampling: SamplingParams) -> list[SeqResult]:
        """items: (seq_id, position, token_ids, sample)."""
        single = len(self.fragments) == 1
        results = self.fragments[0].step(
            [SeqStep(s, p, ids, sample=smp and single, sampling=sampling) for s, p, ids, smp in items]
        )
        for frag in self.fragments[1:]:
            last = frag is self.fragments[-1]
            steps = [
                SeqStep(s, p, hidden=r.hidden, sample=smp and last, sampling=sampling)
                for (s, p, _, smp), r in zip(items, results)
            ]
            results = frag.step(steps)
        return results

    def release(self, seq_ids: list[str]) -> None:
        for frag in self.fragments:
            frag.release(seq_ids)


def generate(
    pipe: Pipeline | Fragment, prompts: list[list[int]], max_new: int, chunk: int | None = None, tag: str = "s"
) -> list[list[int]]:
    """Greedy tokens for all prompts decoded together as one batch; prompts prefilled in chunks of `chunk`."""
    traces = trace(pipe, prompts, max_new, chunk, tag)
    return [[r.token_id for r in t] for t in traces]


def trace(
    pipe: Pipeline | Fragment,
    prompts: list[list[int]],
    max_new: int,
    chunk: int | None = None,
    tag: str = "s",
    sampling: SamplingParams | None = None,
) -> list[list[SeqResult]]:
    """Like `generate`, but returns every sampled SeqResult (token, logprob, top) per prompt."""
    pipe = pipe if isinstance(pipe, Pipeline) else Pipeline([pipe])
    sampling = sampling or SamplingParams()
    ids = [f"{tag}{i}" for i in range(len(prompts))]
    pos = [0] * len(prompts)
    outs: list[list[SeqResult]] = [[] for _ in prompts]
    while any(pos[i] < len(p) for i, p in enumerate(prompts)):
        items, owners = [], []
        for i, p in enumerate(prompts):
            if pos[i] < len(p):
                n = len(p) - pos[i] if chunk is None else min(chunk, len(p) - pos[i])
                items.append((ids[i], pos[i], p[pos[i] : pos[i] + n], pos[i] + n == len(p)))
                owners.append(i)
                pos[i] += n
        for i, r in zip(owners, pipe.step(items, sampling)):
            if r.token_id is not None:
                outs[i].append(r)
    for _ in range(max_new - 1):
        items = [(ids[i], pos[i], [outs[i][-1].token_id], True) for i in range(len(prompts))]
        for i, r in enumerate(pipe.step(items, sampling)):
            outs[i].append(r)
            pos[i] += 1
    pipe.release(ids)
    return outs


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new: int) -> list[int]:
    """A plain argmax loop with transformers' own KV cache: no EOS stop, no generation-config penalties."""
    out: list[int] = []
    with torch.no_grad():
        res = model(input_ids=torch.tensor([prompt]), use_cache=True)
        for _ in range(max_new):
            token = int(res.logits[0, -1].argmax())
            out.append(token)
            if len(out) == max_new:
                break
            res = model(input_ids=torch.tensor([[token]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))
