"""One streamed request and the server probe, over real HTTP against stand-in servers."""

from __future__ import annotations

import socket
import time

import aiohttp
import pytest

from genie.benchmarks.client import request_body, send_request
from genie.benchmarks.options import Endpoint
from genie.benchmarks.probe import Unreachable, probe
from genie.benchmarks.prompts import Prompt

PROMPT = Prompt("p0", (("system", "be brief"), ("user", "hello there")), 4)


async def send(url: str, endpoint: Endpoint = Endpoint.CHAT, max_tokens: int = 16, ignore_eos: bool = True,
               timeout_s: float = 30.0):
    body = request_body(endpoint, "standin-model", PROMPT, max_tokens, 0.0, ignore_eos)
    async with aiohttp.ClientSession() as session:
        return await send_request(session, url + endpoint.path, body, PROMPT, time.perf_counter(), timeout_s)


def test_request_body_sends_ignore_eos_only_when_asked():
    chat = request_body(Endpoint.CHAT, "m", PROMPT, 8, 0.0, ignore_eos=False)
    assert "ignore_eos" not in chat
    assert chat["messages"][0] == {"role": "system", "content": "be brief"}
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True}
    text = request_body(Endpoint.COMPLETIONS, "m", PROMPT, 8, 0.0, ignore_eos=True)
    assert text["ignore_eos"] is True and text["prompt"].endswith("Assistant:") and "messages" not in text


@pytest.mark.parametrize("endpoint", list(Endpoint))
async def test_streamed_request_is_timed_per_chunk(standin, endpoint):
    server = standin(token_delay_s=0.004)
    record = await send(server.url, endpoint)
    assert record.ok, record.error
    assert record.output_tokens == 16 and record.output_tokens_from == "usage"
    assert record.prompt_tokens == 11 and record.prompt_tokens_from == "usage"
    assert len(record.itl_s) == 15
    assert 0 < record.ttft_s < record.e2e_s
    assert record.tpot_s >= 0.004  # the stand-in sleeps that long between tokens
    assert server.bodies[0]["ignore_eos"] is True


async def test_without_ignore_eos_the_server_decides_the_length(standin):
    server = standin(natural_tokens=5)
    record = await send(server.url, ignore_eos=False)
    assert record.ok and record.output_tokens == 5


async def test_no_usage_falls_back_to_counting_chunks(standin):
    record = await send(standin(send_usage=False).url, max_tokens=7)
    assert record.ok
    assert (record.output_tokens, record.output_tokens_from) == (7, "chunks")
    assert (record.prompt_tokens, record.prompt_tokens_from) == (4, "estimate")


async def test_http_error_becomes_a_record_with_the_servers_message(standin):
    record = await send(standin(fail_every=1).url)
    assert not record.ok
    assert record.error == "HTTP 500: stand-in failure on request 0"


async def test_error_event_in_the_stream_fails_the_request(standin):
    record = await send(standin(stream_error_after=3).url)
    assert record.error == "error in stream: stand-in stream broke"


async def test_slow_request_times_out_with_the_flag_named(standin):
    record = await send(standin(token_delay_s=0.5).url, timeout_s=0.3)
    assert record.error == "no complete answer within --timeout 0.3 s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_connection_becomes_a_record():
    record = await send(f"http://127.0.0.1:{free_port()}")
    assert record.error.startswith("cannot connect: connection refused")


async def test_probe_lists_models_and_warns_about_a_wrong_one(standin):
    server = standin()
    found = await probe(server.url, "standin-model", {})
    assert found.models == ("standin-model",) and found.warning is None
    wrong = await probe(server.url, "other", {})
    assert "'other' is not among the models" in wrong.warning and "standin-model" in wrong.warning


async def test_probe_of_a_path_without_the_api_warns_but_goes_on(standin):
    found = await probe(standin().url + "/nothing", "standin-model", {})
    assert found.models is None and "404" in found.warning


async def test_probe_refused_port_is_unreachable():
    with pytest.raises(Unreachable, match="connection refused.*Is the server running"):
        await probe(f"http://127.0.0.1:{free_port()}", "m", {})


async def test_probe_of_a_silent_server_gives_up_after_its_timeout():
    with socket.socket() as silent:  # accepts connections into its backlog, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(Unreachable, match="did not answer GET /v1/models within 0.5 s"):
            await probe(url, "m", {}, timeout_s=0.5)
