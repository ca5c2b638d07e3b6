"""Batch invariance through the real path: genie-serve on configs/llm.yaml (bf16, its default here, one worker
process), driven by the real `openai` client. 16 prompts of mixed lengths (64 with GENIE_INVARIANCE_FULL=1),
greedy, 64 tokens (128), `ignore_eos`, each sent alone and then all in one burst. The burst runs with small prefill chunks and a KV cache too small
for all 64 at once, so prompts are prefilled in pieces that share steps with other requests' decodes, and some
requests are preempted and prefilled again. Every output is the same, token for token, and so is every
logprob, to the bit (the JSON carries each as the shortest repr of a float32)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from conftest import shipped_config
from served import child_pids, get_text

pytestmark = pytest.mark.slow

MODEL = "smollm2"
# The suite runs 16 prompts x 64 tokens (32 x 64 took 117 s of CI's 34 minutes; 16 requests of 20-80 + 64
# tokens still need over four times the KV cache, so chunking and preemption are still forced);
# GENIE_INVARIANCE_FULL=1 runs the 64 x 128.
FULL = os.environ.get("GENIE_INVARIANCE_FULL") == "1"
COUNT, TOKENS = (64, 128) if FULL else (16, 64)
SUBJECTS = ["the sea", "a violin", "winter", "bread", "a comet", "old maps", "rain", "a lighthouse"]


def prompts() -> list[str]:
    out = []
    for i in range(COUNT):
        subject = SUBJECTS[i % len(SUBJECTS)]
        detail = " Mention the colour of the sky, a name, and a number." * (i % 5)
        out.append(f"Write a short story ({i}) about {subject}.{detail} Begin:")
    return out


@pytest.fixture(scope="module")
def server(serve_config):
    config = shipped_config("llm.yaml")
    config["serving"] |= {"grpc_port": None, "prefill_chunk_tokens": 16}  # prompts arrive in several chunks
    # 8 MiB of KV hold about 350 tokens; 16 requests of 20-80 + 64 tokens need far more: some are preempted
    config["workers"] |= {"kv_cache_mib": 8}
    return serve_config(config)


def completion(client, prompt: str):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0, logprobs=1,
                                     extra_body={"ignore_eos": True})


def answer(response) -> tuple[str, list[float]]:
    choice = response.choices[0]
    assert choice.finish_reason == "length" and len(choice.logprobs.token_logprobs) == TOKENS
    return choice.text, choice.logprobs.token_logprobs


def preemptions(url: str) -> float:
    metrics = get_text(f"{url}/metrics")
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("genie_preemptions_total"))


def test_greedy_requests_give_the_same_tokens_and_logprobs_alone_and_in_a_burst(server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    alone = [answer(completion(client, p)) for p in prompts()]
    before = preemptions(server.url)

    async def burst() -> list:
        together = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)
        try:
            return await asyncio.gather(*(together.completions.create(
                model=MODEL, prompt=p, max_tokens=TOKENS, temperature=0, logprobs=1,
                extra_body={"ignore_eos": True}) for p in prompts()))
        finally:
            await together.close()

    burst_answers = [answer(r) for r in asyncio.run(burst())]
    assert preemptions(server.url) > before, "the burst was meant to preempt some requests"
    for i, (one, many) in enumerate(zip(alone, burst_answers)):
        assert many[0] == one[0], f"prompt {i}: the text differs"
        assert many[1] == one[1], f"prompt {i}: the logprobs differ"


def test_the_default_layouts_one_worker_killed_mid_stream_comes_back_and_the_stream_goes_on(server) -> None:
    """configs/llm.yaml runs one worker, so no other replica can take its requests when it dies: a stream
    waits for the restarted worker, is prefilled again from prompt + output there, and ends with the tokens it
    would have had (batch-invariant kernels make the recompute exact)."""
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    prompt = prompts()[3]
    alone = answer(completion(client, prompt))[0]
    (worker,) = child_pids(server.pid)
    text, reason, killed = "", None, False
    for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
        text += chunk.choices[0].text
        reason = chunk.choices[0].finish_reason or reason
        if text and not killed:
            os.kill(worker, signal.SIGKILL)
            killed = True
    assert killed and reason == "length"
    assert text == alone
    assert worker not in child_pids(server.pid) and len(child_pids(server.pid)) == 1
