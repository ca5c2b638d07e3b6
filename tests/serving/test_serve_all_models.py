"""Several models in one genie-serve (CLI subprocess, two worker processes, each holding a replica of every
model): SmolLM2 (chat), all-MiniLM-L6-v2 (embeddings) and a `py:` factory CNN (tensors, no pooling). Requests
of both endpoints interleave from concurrent clients (the real `openai` async client), each routed by its model;
a worker killed under that load comes back with the fragments of every model it held."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shipped_config
from served import child_pids, get_json, post_json

pytestmark = pytest.mark.slow

FACTORIES = Path(__file__).resolve().parents[1] / "workers"  # stateless_models.py: the py: factory module
CHATS = ["What is the capital of France?", "Name three colours.", "Count from one to five.", "Say hello in Spanish."]
SENTENCES = [f"A sentence about a {w}{' that goes on for a good while longer' * (i % 3)}."
             for i, w in enumerate(["cat", "ship", "tree", "lamp", "moon", "bread", "storm", "chair"])]


@pytest.fixture(scope="module")
def server(serve_config):
    config = shipped_config("all.yaml")
    for model in config["models"]:
        model["dtype"] = "float32"  # greedy text then does not depend on what a request is batched with
    config["models"].append({"name": "cnn", "source": "py:stateless_models:small_cnn", "register_if_missing": True,
                             "dtype": "float32"})
    config["workers"] |= {"kv_cache_mib": 64, "restart_backoff_s": 0.5}
    config["serving"] |= {"grpc_port": None, "worker_timeout_s": 20}
    env = {"PYTHONPATH": os.pathsep.join([str(FACTORIES), os.environ.get("PYTHONPATH", "")])}
    return serve_config(config, env=env)


async def _chat(client, question: str) -> str:
    out = await client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                               temperature=0, max_tokens=24)
    return out.choices[0].message.content


async def _embed(client, text: str) -> np.ndarray:
    out = await client.embeddings.create(model="minilm", input=text)
    return np.array(out.data[0].embedding, dtype=np.float32)


async def _alone(url: str) -> tuple[list[str], list[np.ndarray]]:
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        texts = [await _chat(client, q) for q in CHATS]
        vectors = [await _embed(client, s) for s in SENTENCES]
    return texts, vectors


async def _interleaved(url: str, rounds: int, disturb=None) -> tuple[list[str], list[np.ndarray]]:
    """`rounds` copies of every chat and embedding request, all in flight at once from one client each."""
    import openai

    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as client:
        chats = [asyncio.create_task(_chat(client, q)) for _ in range(rounds) for q in CHATS]
        embeds = [asyncio.create_task(_embed(client, s)) for _ in range(rounds) for s in SENTENCES]
        if disturb is not None:
            await disturb()
        return list(await asyncio.gather(*chats)), list(await asyncio.gather(*embeds))


@pytest.fixture(scope="module")
def alone(server) -> tuple[list[str], list[np.ndarray]]:
    return asyncio.run(_alone(server.url))


def test_models_lists_every_model_with_its_kind(server) -> None:
    status, body = get_json(f"{server.url}/v1/models")
    assert status == 200
    assert [(m["id"], m["kind"]) for m in body["data"]] == [("smollm2", "llm"), ("minilm", "embedding"),
                                                            ("cnn", "tensor")]


def test_chat_and_embeddings_interleave_from_concurrent_clients(server, alone) -> None:
    texts, vectors = alone
    assert all(texts) and "Paris" in texts[0], texts
    got_texts, got_vectors = asyncio.run(_interleaved(server.url, rounds=2))
    assert got_texts == texts * 2
    assert np.abs(np.stack(got_vectors) - np.stack(vectors * 2)).max() < 1e-5


WRONG_KIND = [  # (path, model, words of the message)
    ("/v1/embeddings", "smollm2", "generative model"),
    ("/v1/embeddings", "cnn", "no pooling"),
    ("/v1/chat/completions", "minilm", "/v1/embeddings"),
    ("/v1/completions", "cnn", "not a generative one"),
]


@pytest.mark.parametrize(("path", "model", "words"), WRONG_KIND, ids=[f"{p} {m}" for p, m, _ in WRONG_KIND])
def test_a_model_of_the_wrong_kind_is_a_400_that_names_it(server, path: str, model: str, words: str) -> None:
    body = {"model": model, "input": "hi", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    status, reply = post_json(server.url + path, body)
    assert status == 400 and words in reply["error"]["message"] and model in reply["error"]["message"], reply


def test_an_unknown_model_is_a_404_that_names_the_served_ones(server) -> None:
    status, reply = post_json(server.url + "/v1/embeddings", {"model": "gpt-9", "input": "hi"})
    assert status == 404 and reply["error"]["code"] == "model_not_found", reply
    assert "this server serves 'smollm2', 'minilm', 'cnn'" in reply["error"]["message"]


def _states(url: str) -> dict[tuple[str, str], str]:
    _, body = get_json(f"{url}/health")
    return {(m["name"], r["name"]): r["state"] for m in body["models"] for r in m["replicas"]}


def test_a_killed_worker_comes_back_for_every_model_and_no_request_is_lost(server, alone) -> None:
    texts, vectors = alone
    workers = child_pids(server.pid)
    assert len(workers) == 2

    async def kill() -> None:
        await asyncio.sleep(0.3)  # let the requests reach the workers first
        os.kill(workers[0], signal.SIGKILL)

    got_texts, got_vectors = asyncio.run(_interleaved(server.url, rounds=2, disturb=kill))
    assert got_texts == texts * 2
    assert np.abs(np.stack(got_vectors) - np.stack(vectors * 2)).max() < 1e-5
    # The requests may all be answered before the supervisor notices the kill (the prefix cache makes the
    # second round quick), so wait for the replacement itself: a new worker in place of the killed one, and
    # every replica ready again.
    deadline = time.monotonic() + 120

    def recovered() -> bool:
        kids = child_pids(server.pid)
        return workers[0] not in kids and len(kids) == 2 and set(_states(server.url).values()) == {"ready"}

    while not recovered():
        assert time.monotonic() < deadline, (
            f"not every replica came back: {_states(server.url)}, workers {child_pids(server.pid)}")
        time.sleep(0.25)
    assert len(_states(server.url)) == 6  # three models, a replica of each on both workers
    after_texts, after_vectors = asyncio.run(_interleaved(server.url, rounds=1))  # served by both again
    assert after_texts == texts and np.abs(np.stack(after_vectors) - np.stack(vectors)).max() < 1e-5
