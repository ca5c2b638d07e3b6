"""The scheduler's plans executed by a real transformer with a real per-sequence KV cache.

Each sequence keeps an HF DynamicCache; every chunk must start exactly where the cache ends, preempted
sequences lose their cache, and the greedy outputs must equal `model.generate` run on each prompt alone.
"""

from __future__ import annotations

import pytest
import torch
from builders import Driver, FakeWorkers, make_request

from genie.serving.step_plan import StepPlan


class TransformerWorkers(FakeWorkers):
    """FakeWorkers' checks and bookkeeping, plus a real model forward over each chunk with its KV cache."""

    def __init__(self, model, replicas: dict[str, int], block_size: int) -> None:
        super().__init__(replicas, block_size)
        self.model = model
        self.caches: dict[str, object] = {}

    def release(self, replica: str, seq_id: str) -> None:
        super().release(replica, seq_id)
        self.caches.pop(seq_id, None)

    @torch.inference_mode()
    def step(self, plan: StepPlan, evictions: dict[str, list[bytes]] | None = None) -> dict[str, int]:
        super().step(plan, evictions)  # checks positions and block counts, tracks ids; its hash samples are ignored
        sampled = {}
        for replica, seq in plan.seqs():
            if seq.cached_prefix:  # what the worker's cached blocks hold: the prefix's KV, computed alone
                prefix = self.kv[replica][seq.request_id][: seq.position]
                self.caches[seq.request_id] = self.model(torch.tensor([prefix]), use_cache=True).past_key_values
            cache = self.caches.get(seq.request_id)
            assert (0 if cache is None else cache.get_seq_length()) == seq.position
            out = self.model(torch.tensor([seq.token_ids]), past_key_values=cache, use_cache=True)
            self.caches[seq.request_id] = out.past_key_values
            if seq.sample:
                sampled[seq.request_id] = int(out.logits[0, -1].argmax())
        return sampled


@pytest.fixture(scope="module")
def gpt2(gpt2_tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gpt2_tiny_dir, dtype=torch.float32).eval()


def generate_alone(model, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_chunked_batched_preempted_run_matches_generate(gpt2):
    replicas = {"r0": 12, "r1": 10}  # 4-token blocks: tight enough that decodes preempt each other
    drv = Driver.build(replicas, block_size=4, max_batch_tokens=24, prefill_chunk_tokens=7)
    drv.workers = TransformerWorkers(gpt2, replicas, block_size=4)
    reqs = [make_request(f"g{i}", prompt=5 + 4 * i, max_tokens=12) for i in range(6)]
    for req in reqs:
        drv.scheduler.add(req)
    drv.run()
    assert sum(req.num_preemptions for req in reqs) > 0
    assert any(seq.num_tokens == 7 and not seq.sample for plan in drv.plans for _, seq in plan.seqs())
    for req in reqs:
        assert drv.outputs[req.request_id] == generate_alone(gpt2, req.prompt_ids, 12), req.request_id
    assert drv.workers.caches == {}
