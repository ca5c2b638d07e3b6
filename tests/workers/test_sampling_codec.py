"""The step codec's caches: equal params share one conversion, a refused message is refused every time, and
what the cache gives back is what the uncached codec gives."""

from __future__ import annotations

import pytest
import torch

from genie.errors import InvalidRequest
from genie.protos import worker_pb2 as pb
from genie.workers import codec, sampling_codec
from genie.workers.blind import BlindSeqResult, BlindSeqStep
from genie.workers.contract import SamplingParams, SeqResult, SeqStep

PARAMS = SamplingParams(temperature=0.75, top_k=5, top_p=0.875, seed=3, logprobs=2, logit_bias=((4, 1.5), (9, -2.0)),
                        min_tokens=2, stop_ids=(0, 1), prompt_len=12, guide_kind="regex", guide_spec="[a-z]+")


def test_a_decoded_step_equals_the_uncached_decode() -> None:
    step = SeqStep("s", 7, token_ids=[5], sample=True, sampling=PARAMS, cached_prefix=(b"a",), new_block_hashes=(b"b",))
    for _ in range(2):  # the second reads both caches
        msg = pb.SeqStep.FromString(codec.seq_step_to_pb(step).SerializeToString())
        assert msg.sampling == sampling_codec.sampling_to_pb(PARAMS)
        assert codec.seq_step_from_pb(msg) == step
    assert sampling_codec.sampling_from_wire(msg.sampling) is sampling_codec.sampling_from_wire(msg.sampling)


def test_the_shared_message_is_copied_into_each_step() -> None:
    first = codec.seq_step_to_pb(SeqStep("a", 0, token_ids=[1], sampling=PARAMS))
    first.sampling.top_k = 99  # a caller changing its own step leaves the shared message alone
    assert codec.seq_step_to_pb(SeqStep("b", 0, token_ids=[1], sampling=PARAMS)).sampling.top_k == 5


def test_a_refused_sampling_message_is_refused_every_time() -> None:
    bad = pb.SamplingParams(logit_bias_ids=[1, 2], logit_bias_values=[0.5])
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="2 logit_bias_ids but 1 logit_bias_values"):
            codec.seq_step_from_pb(pb.SeqStep(seq_id="s", token_ids=[1], sampling=bad))


def test_a_long_guide_is_converted_each_time_not_kept() -> None:
    spec = "x" * (sampling_codec.MAX_CACHED_BYTES + 1)
    params = SamplingParams(guide_kind="regex", guide_spec=spec)
    kept = sampling_codec._to_pb_cached.cache_info().currsize
    msg = sampling_codec.shared_sampling_pb(params)
    assert sampling_codec.sampling_from_wire(msg) == params
    assert sampling_codec._to_pb_cached.cache_info().currsize == kept


def test_results_and_blind_steps_keep_every_field() -> None:
    hidden = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for result in (SeqResult("r", 3, -0.25, [(3, -0.25), (8, -1.5)]), SeqResult("r", 0, None, []),
                   SeqResult("r"), SeqResult("r", hidden=hidden)):
        back = codec.seq_result_from_pb(pb.SeqResult.FromString(codec.seq_result_to_pb(result).SerializeToString()))
        assert (back.seq_id, back.token_id, back.logprob, back.top) == (result.seq_id, result.token_id,
                                                                         result.logprob, result.top)
        assert (back.hidden is None) == (result.hidden is None)
        assert back.hidden is None or torch.equal(back.hidden, hidden)
    blind = codec.seq_result_from_pb(codec.seq_result_to_pb(BlindSeqResult("r", 2, kv=hidden)))
    assert isinstance(blind, BlindSeqResult) and torch.equal(blind.kv, hidden)
    step = codec.seq_step_from_pb(codec.seq_step_to_pb(BlindSeqStep("s", 4, token_ids=[1], kv=hidden, return_kv=True)))
    assert isinstance(step, BlindSeqStep) and step.return_kv and torch.equal(step.kv, hidden)
    assert step.token_ids == [1] and step.position == 4


def test_mismatched_top_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        codec.seq_result_from_pb(pb.SeqResult(seq_id="r", sampled=True, top_token_ids=[1, 2], top_logprobs=[-1.0]))
