"""Prefix caching through the real path: genie-serve with SmolLM2 on two worker processes, the real `openai`
client, caching off and then on. 4 requests share a system prompt of about 1,000 tokens and 2 have prompts of
their own, all sent at once, greedy, `ignore_eos`, with logprobs. With the cache every token and every logprob
is the same as without it (float32), most of the shared prompt
is read from cache, and at the end every KV block on the workers is free or cached-and-evictable."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conftest import smollm2_config, start_server
from served import get_json, get_text

pytestmark = pytest.mark.slow

MODEL = "smollm2"
TOKENS = 8
WORDS = ("river", "lantern", "copper", "meadow", "signal", "harbor", "quartz", "ember", "willow", "orbit")


def system_prompt(words: int = 700) -> str:
    """About 1,000 SmolLM2 tokens of varied text."""
    return " ".join(f"{WORDS[(i * 7 + i // 10) % len(WORDS)]}{i % 13}" for i in range(words))


# The suite runs 4 sharing + 2 other requests (6 + 2 took 85 s of CI's 34 minutes); GENIE_PREFIX_TEST_FULL=1
# runs the 32 + 16 (and GENIE_PREFIX_TEST_DTYPES=float32,bfloat16 both dtypes) when there is time for it.
FULL = os.environ.get("GENIE_PREFIX_TEST_FULL") == "1"
SHARING, OTHERS = (32, 16) if FULL else (4, 2)
DTYPES = os.environ.get("GENIE_PREFIX_TEST_DTYPES", "float32").split(",")


def conversations() -> list[list[dict]]:
    shared = system_prompt()
    together = [[{"role": "system", "content": shared}, {"role": "user", "content": f"Question {i}: what is {i}+{i}?"}]
                for i in range(SHARING)]
    alone = [[{"role": "user", "content": f"Tell me about the number {i * 37} in one line."}] for i in range(OTHERS)]
    per = SHARING // OTHERS
    mixed = []
    for i in range(OTHERS):  # interleaved: `per` sharing ones, then another
        mixed += together[per * i : per * (i + 1)] + alone[i : i + 1]
    return mixed + together[per * OTHERS :]


def counter(url: str, name: str) -> float:
    lines = get_text(f"{url}/metrics").splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith(name + " ") or line.startswith(name + "{"))


async def burst(url: str) -> list[tuple[str, list[float]]]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        answers = await asyncio.gather(*(client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=TOKENS, temperature=0, logprobs=True,
            extra_body={"ignore_eos": True}) for messages in conversations()))
    finally:
        await client.close()
    out = []
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "length" and len(choice.logprobs.content) == TOKENS
        out.append((choice.message.content, [t.logprob for t in choice.logprobs.content]))
    return out


def settled_workers(url: str, timeout: float = 30.0) -> list[dict]:
    """The workers' stats once the router's last Release reached them (it follows the last answer shortly)."""
    deadline = time.monotonic() + timeout
    while True:
        _, body = get_json(f"{url}/v1/genie/workers")
        fragments = [frag for worker in body["data"] for frag in worker["fragments"]]
        if all(frag["sequences"] == 0 for frag in fragments) or time.monotonic() > deadline:
            return fragments
        time.sleep(0.1)


def served(tmp_path, dtype: str, caching: bool) -> tuple[list, float, float, dict]:
    config = smollm2_config(dtype, workers={"kv_cache_mib": 512 if FULL else 96}, prefix_caching=caching)
    home = tmp_path / f"{dtype}-{caching}"
    home.mkdir()
    server = start_server(config, home)
    try:
        answers = asyncio.run(burst(server.url))
        hits = counter(server.url, "genie_prefix_cache_hits_total")
        queries = counter(server.url, "genie_prefix_cache_queries_total")
        workers = settled_workers(server.url)
    finally:
        assert server.stop(grace=30) == 0, server.log_tail()
    return answers, hits, queries, workers


# float32 only: a bfloat16 pair costs another 75 s here, and bfloat16 is covered by the engine's cached-vs-scratch
# test (tests/workers/test_engine_prefix_cache.py) and by test_serve_batch_invariance.py, whose preempted
# requests come back from their cached blocks.
@pytest.mark.parametrize("dtype", DTYPES)
def test_cached_prefixes_give_the_same_tokens_and_logprobs_as_recomputing_them(tmp_path, dtype) -> None:
    without, *_ = served(tmp_path, dtype, caching=False)
    with_cache, hits, queries, workers = served(tmp_path, dtype, caching=True)
    for i, (plain, cached) in enumerate(zip(without, with_cache)):
        assert cached[0] == plain[0], f"request {i}: the text differs"
        assert cached[1] == plain[1], f"request {i}: the logprobs differ"
    # 3 of the 4 sharing requests read the ~1,000 shared tokens from cache: well over half of all prompt tokens
    assert queries > 0 and hits / queries > 0.5, (hits, queries)
    fragments = workers
    assert fragments and all(frag["kv_blocks_used"] == 0 for frag in fragments), fragments
    assert sum(frag["kv_blocks_evictable"] for frag in fragments) > 0
