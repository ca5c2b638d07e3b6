"""A burst of chat requests whose prompts share only a short head (the chat template's first block): none of
them may wait a step for that head, and the first one's decode must not ride along with the rest of the
burst's prefill. That wait was one stall per burst in the served stream (a 1.8-1.9 s inter-token gap at
max_batch_tokens 2048 in issue 16's prefill-heavy run), for 16 tokens of compute saved per request. A burst
sharing a long prompt still waits and computes it once (test_scheduler_prefix.py)."""

from __future__ import annotations

from builders import Driver, make_request, reference_output

from genie.serving.request import Request

HEAD = 4  # one block of block_size 4: the shared template head


def burst(n: int, tail: int) -> list[Request]:
    head = make_request("template", prompt=HEAD).prompt_ids
    return [Request(f"chat{i}", head + make_request(f"chat{i}", prompt=tail).prompt_ids, max_tokens=4)
            for i in range(n)]


def test_a_short_shared_head_admits_the_whole_burst_in_its_first_step() -> None:
    drv = Driver.build({"r0": 128}, block_size=4, max_batch_tokens=256, prefill_chunk_tokens=64)
    reqs = burst(6, tail=36)  # 40 tokens each: 1 shared block, 9 of their own
    for req in reqs:
        drv.scheduler.add(req)
    drv.step()
    first = {seq.request_id for _, seq in drv.plans[0].seqs()}
    assert first == {r.request_id for r in reqs}, f"step 1 admitted only {sorted(first)}"
    drv.run()
    for req in reqs:
        assert drv.outputs[req.request_id] == reference_output(req, 512), req.request_id


def test_no_decode_of_the_burst_waits_for_the_rest_of_the_burst_to_prefill() -> None:
    drv = Driver.build({"r0": 128}, block_size=4, max_batch_tokens=256, prefill_chunk_tokens=64)
    reqs = burst(6, tail=36)
    for req in reqs:
        drv.scheduler.add(req)
    drv.run()
    for plan in drv.plans:
        decodes = [seq.request_id for _, seq in plan.seqs() if seq.position >= 40]
        prefill_tokens = sum(seq.num_tokens for _, seq in plan.seqs() if seq.position < 40)
        assert not (decodes and prefill_tokens), (
            f"step {plan.step}: {decodes} decode behind {prefill_tokens} prefill tokens of their own burst")


def test_a_long_shared_head_still_waits_for_its_blocks() -> None:
    drv = Driver.build({"r0": 128}, block_size=4, max_batch_tokens=256, prefill_chunk_tokens=64)
    head = make_request("system", prompt=32).prompt_ids  # 8 shared blocks of a 35-token prompt
    reqs = [Request(f"sys{i}", head + make_request(f"sys{i}", prompt=3).prompt_ids, max_tokens=4) for i in range(4)]
    for req in reqs:
        drv.scheduler.add(req)
    drv.step()
    assert [seq.request_id for _, seq in drv.plans[0].seqs()] == ["sys0"]
    drv.run()
    later = [seq for plan in drv.plans[1:] for _, seq in plan.seqs() if seq.request_id != "sys0" and seq.position < 35]
    assert later and all(seq.position == 32 for seq in later)  # each starts from the 32 cached tokens
