"""The sampling parameters on the real path: `genie-serve` with SmolLM2 (float32) driven by the real `openai`
client (and one gRPC call), each parameter changing the output the way OpenAI (or vLLM, for its extras)
documents it. One server for the module; short outputs."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow

MODEL = "smollm2"
CAPITAL = "The capital of France is"
REPEAT = "yes, yes, yes, yes, yes, yes,"
SHORT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(serve_smollm2):
    # float32: greedy output is then the same whatever a request is batched with (see test_openai_e2e).
    return serve_smollm2(dtype="float32", max_queue=64, grpc_port=0)


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def complete(client, prompt: str = CAPITAL, max_tokens: int = 8, **extra):
    return client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=max_tokens, **extra)


def one_token(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_logit_bias_removes_and_forces_tokens(client, tok) -> None:
    plain = complete(client).choices[0].text
    assert plain.startswith(" Paris"), plain
    paris = one_token(tok, " Paris")
    banned = complete(client, logit_bias={str(paris): -100}).choices[0].text
    assert "Paris" not in banned and banned.strip()
    forced = complete(client, max_tokens=3, logit_bias={str(one_token(tok, " banana")): 100}).choices[0].text
    assert forced == " banana banana banana", forced


def test_frequency_presence_and_repetition_penalties_cut_repeats(client) -> None:
    def repeats(**extra) -> int:
        return complete(client, REPEAT, max_tokens=12, **extra).choices[0].text.count("yes")

    plain = repeats()
    assert plain >= 5  # the prompt makes the model repeat itself
    assert repeats(frequency_penalty=2.0) < plain
    assert repeats(presence_penalty=2.0) < plain
    assert repeats(extra_body={"repetition_penalty": 1.8}) < plain
    assert repeats(frequency_penalty=-2.0) >= plain  # a negative penalty favours repeats


def test_min_tokens_holds_off_the_end(client) -> None:
    def answer(**extra):
        return client.chat.completions.create(model=MODEL, messages=SHORT, temperature=0, max_tokens=20, **extra)

    short = answer()
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 10
    held = answer(extra_body={"min_tokens": 15})
    assert held.usage.completion_tokens >= 15


def test_stop_token_ids_end_the_text(client, tok) -> None:
    plain = complete(client, max_tokens=8)
    paris = one_token(tok, " Paris")
    stopped = complete(client, max_tokens=8, extra_body={"stop_token_ids": [paris]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 1
    assert plain.choices[0].finish_reason == "length"


def test_seeded_sampling_with_penalties_repeats(client) -> None:
    kwargs = dict(prompt=REPEAT, max_tokens=12, temperature=1.0, seed=11, frequency_penalty=1.0)
    a = client.completions.create(model=MODEL, **kwargs).choices[0].text
    assert client.completions.create(model=MODEL, **kwargs).choices[0].text == a


def test_a_penalised_request_leaves_greedy_neighbours_unchanged(server, client) -> None:
    import openai

    plain_prompts = [CAPITAL, "Once upon a time", "The best way to learn is", "1, 2, 3,"]
    alone = [complete(client, p, max_tokens=10).choices[0].text for p in plain_prompts]

    async def together() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        penalised = dict(model=MODEL, prompt=REPEAT, temperature=0, max_tokens=10, frequency_penalty=2.0,
                         presence_penalty=1.0, logit_bias={"33": 5}, extra_body={"repetition_penalty": 1.3,
                                                                                   "min_tokens": 10})
        try:
            calls = [aclient.completions.create(**penalised) for _ in range(4)]
            calls += [aclient.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=10)
                      for p in plain_prompts]
            outs = await asyncio.gather(*calls)
        finally:
            await aclient.close()
        return [o.choices[0].text for o in outs[4:]]

    assert asyncio.run(together()) == alone


def test_out_of_range_values_are_400_naming_the_field(client) -> None:
    import openai

    cases = [
        (dict(frequency_penalty=2.5), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(logit_bias={"5": 150}), "logit_bias"),
        (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
        (dict(extra_body={"min_tokens": 9}), "min_tokens"),  # more than max_tokens
        (dict(extra_body={"stop_token_ids": [10**9]}), "stop_token_ids"),
        (dict(suffix="and so on"), "suffix"),
        (dict(best_of=3), "best_of"),
    ]
    for extra, field in cases:
        with pytest.raises(openai.BadRequestError) as err:
            complete(client, max_tokens=8, **extra)
        assert f"'{field}'" in str(err.value), (field, err.value)


def test_grpc_takes_the_same_parameters(server, tok) -> None:
    import grpc

    from genie.protos import inference_pb2 as pb
    from genie.protos import inference_pb2_grpc

    paris = one_token(tok, " Paris")

    def generate(**fields) -> list[int]:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            req = pb.GenerateRequest(**(dict(model=MODEL, prompt=CAPITAL, max_tokens=4, temperature=0) | fields))
            return [t for msg in stub.Generate(req, timeout=120) for t in msg.token_ids]

    assert generate()[0] == paris
    assert paris not in generate(logit_bias={paris: -100.0})
    assert len(generate(stop_token_ids=[paris])) == 1
    counts = Counter(generate(frequency_penalty=2.0, max_tokens=8, prompt=REPEAT))
    assert counts[one_token(tok, " yes")] < 3
    with pytest.raises(grpc.RpcError) as err:
        generate(repetition_penalty=5.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "repetition_penalty" in err.value.details()


def test_n_choices_differ_and_repeat_with_a_seed(client) -> None:
    kwargs = dict(model=MODEL, messages=SHORT, temperature=1.0, max_tokens=12, seed=3, n=3)
    first = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) == 3
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in sorted(again.choices, key=lambda c: c.index)] == texts
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[i] for i in range(3)] == texts


def test_the_readme_grpc_example_runs_as_written(server, capsys) -> None:
    """The README's gRPC client block, run with this server's address in place of 127.0.0.1:50051."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```python")[1:] if "InferenceStub" in b).split("```")[0]
    exec(compile(block.replace("127.0.0.1:50051", server.grpc_address), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "Paris" in printed and "FINISH_REASON_" in printed and "prompt_tokens" in printed
