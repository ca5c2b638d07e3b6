"""The router's share of the sampling parameters, against fake workers: n choices in one Submission (their own
seeds, reproducible, aborted together), stop_token_ids, the stop ids min_tokens masks, vocabulary checks, and
a penalised request migrated to another replica that brings its prompt + output and params along."""

from __future__ import annotations

import dataclasses
import zlib

import pytest
from test_router import EOS, VOCAB, FakeClient, FakeTokenizer, make_router, running  # noqa: F401 (running is a fixture)

from genie.errors import InvalidRequest, Unavailable
from genie.serving.choices import choice_seed, member_ids
from genie.serving.router import GenerationRequest
from genie.workers.contract import SamplingParams


class SeededClient(FakeClient):
    """Samples from a hash of the ids and the seed, and keeps every step it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = []

    async def step(self, fragment_id, seqs, timeout=None):
        self.sent.extend(seqs)
        out = await super().step(fragment_id, [dataclasses.replace(s, sample=False) for s in seqs])
        for s, r in zip(seqs, out):
            if s.sample:
                key = repr((self.seqs[s.seq_id], s.sampling.seed)).encode()
                r.token_id = 1 + zlib.crc32(key) % (VOCAB - 1)
        return out


def gen(n: int = 1, seed: int | None = 5, max_tokens: int = 6, **fields) -> GenerationRequest:
    return GenerationRequest([3, 4, 5], max_tokens, SamplingParams(temperature=1.0, seed=seed), n=n, **fields)


async def choices(sub) -> dict[int, tuple[list[int], str | None]]:
    out: dict[int, tuple[list[int], str | None]] = {}
    async for d in sub.deltas():
        ids, _ = out.get(d.index, ([], None))
        out[d.index] = (ids + d.token_ids, d.finish_reason)
    return out


async def test_n_choices_have_their_own_seeds_and_repeat(running) -> None:
    router = running(make_router({"r0": SeededClient()}))
    first = await choices(router.submit(gen(n=3)))
    assert sorted(first) == [0, 1, 2] and all(reason == "length" for _, reason in first.values())
    assert len({tuple(ids) for ids, _ in first.values()}) == 3  # the choices differ
    assert await choices(router.submit(gen(n=3))) == first  # and repeat with the same seed
    assert (await choices(router.submit(gen(n=1))))[0] == first[0]  # choice 0 is the n=1 text
    assert choice_seed(5, 0) == 5 and len({choice_seed(5, i) for i in range(16)}) == 16


async def test_n_usage_sums_the_choices_and_abort_ends_them_all(running) -> None:
    client = SeededClient()
    router = running(make_router({"r0": client}))
    sub = router.submit(gen(n=2, max_tokens=4))
    await choices(sub)
    assert sub.completion_tokens == 8 and sub.prompt_tokens == 3
    sub = router.submit(gen(n=3, max_tokens=200))
    async for delta in sub.deltas():
        if delta.token_ids:
            break
    router.abort(sub.request_id)
    assert await router.wait_idle(5)
    assert set(member_ids(sub.request_id, 3)) <= set(client.released) and client.seqs == {}


async def test_stop_token_ids_end_with_stop_even_when_eos_is_ignored(running) -> None:
    router = running(make_router({"r0": SeededClient()}))
    ids, _ = (await choices(router.submit(gen(max_tokens=8))))[0]
    stopped = gen(max_tokens=8, stop_token_ids=(ids[2],), ignore_eos=True)
    assert (await choices(router.submit(stopped)))[0] == (ids[:3], "stop")


async def test_min_tokens_sends_the_stop_ids_to_the_worker(running) -> None:
    client = SeededClient()
    router = running(make_router({"r0": client}))
    sampling = SamplingParams(min_tokens=3, prompt_len=3)
    await choices(router.submit(GenerationRequest([3, 4, 5], 4, sampling, stop_token_ids=(7,))))
    assert {s.sampling.stop_ids for s in client.sent} == {(EOS, 7)}
    await choices(router.submit(GenerationRequest([3, 4, 5], 4, sampling, stop_token_ids=(7,), ignore_eos=True)))
    assert client.sent[-1].sampling.stop_ids == (7,)


def test_tokens_outside_the_vocabulary_are_refused_at_submit() -> None:
    router = make_router({"r0": SeededClient()})
    with pytest.raises(InvalidRequest, match="'logit_bias' names token ids outside the vocabulary"):
        router.submit(GenerationRequest([3], 4, SamplingParams(logit_bias=((VOCAB, 1.0),))))
    with pytest.raises(InvalidRequest, match="'stop_token_ids'"):
        router.submit(GenerationRequest([3], 4, SamplingParams(), stop_token_ids=(VOCAB + 3,)))


async def test_a_migrated_penalised_request_brings_its_tokens_and_params(running) -> None:
    clients = {"r0": SeededClient(), "r1": SeededClient()}
    router = running(make_router(clients, migration_limit=1))
    sampling = SamplingParams(frequency_penalty=1.5, repetition_penalty=1.2, prompt_len=3)
    sub = router.submit(GenerationRequest([3, 4, 5], 12, sampling))
    got: list[int] = []
    failed = None
    async for delta in sub.deltas():
        got += delta.token_ids
        if failed is None and len(got) >= 3:
            failed = next(c for c in clients.values() if c.sent)
            failed.fail_with = Unavailable("worker-0 died")
    spare = next(c for c in clients.values() if c is not failed)
    moved = [s for s in spare.sent if s.position == 0]
    assert len(moved) == 1 and len(got) == 12 and delta.finish_reason == "length"
    # the new replica prefills prompt + every token streamed so far, with the same sampling params
    assert moved[0].token_ids == [3, 4, 5] + got[: len(moved[0].token_ids) - 3]
    assert len(moved[0].token_ids) > 3 + 2 and moved[0].sampling == sampling


def test_choice_bodies_index_every_choice() -> None:
    from genie.serving.choices import chunk_body, first_chunks, whole_body
    from genie.serving.responses import ChatFormat
    from genie.serving.submission import Delta, Submission

    fmt, sub = ChatFormat("req-1", "m", FakeTokenizer()), Submission("req-1", 3, choices=2)
    deltas = [Delta("a", [1], index=0), Delta("b", [2], index=1), Delta("c", [3], finish_reason="stop", index=1),
              Delta(finish_reason="length", index=0)]
    body = whole_body(fmt, "", deltas, sub)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "a", "length"), (1, "bc", "stop")]
    assert [c["choices"][0]["index"] for c in first_chunks(fmt, 2)] == [0, 1]
    assert chunk_body(fmt, deltas[2])["choices"][0] | {} == {
        "index": 1, "delta": {"content": "c"}, "finish_reason": "stop", "logprobs": None}


async def test_the_last_stage_of_a_pipeline_gets_the_ids_only_when_penalties_count_them() -> None:
    import torch

    from genie.serving.replica import Replica, Stage
    from genie.workers.contract import SeqResult, SeqStep

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[SeqStep] = []

        async def step(self, fragment_id, seqs, timeout=None):
            self.sent.extend(seqs)
            return [SeqResult(s.seq_id, token_id=1 if s.sample else None, hidden=torch.zeros(1, 4)) for s in seqs]

    first, last = Recorder(), Recorder()
    replica = Replica("r0", [Stage("w0", first, "f0"), Stage("w1", last, "f1")], num_blocks=8)
    counted = SamplingParams(presence_penalty=1.0, prompt_len=1)
    await replica.step([SeqStep("a", 0, [5], sample=True, sampling=counted), SeqStep("b", 0, [6], sample=True)], 5)
    assert [s.token_ids for s in first.sent] == [[5], [6]]
    assert [s.token_ids for s in last.sent] == [[5], None] and all(s.hidden is not None for s in last.sent)
