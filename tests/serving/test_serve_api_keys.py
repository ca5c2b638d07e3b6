"""API keys and connection limits on a real genie-serve: keys from $GENIE_API_KEYS (never argv), the real
`openai` client, gRPC metadata, the slow-header timeout, and no listening beyond loopback without a key."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import grpc
import openai
import pytest
from conftest import smollm2_config, start_server

from genie.errors import Unavailable
from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc

pytestmark = pytest.mark.slow

KEY = "sk-genie-test-5f1c0a9e"
HEADER_TIMEOUT_S = 2.0
MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def server(serve_smollm2):
    return serve_smollm2(env={"GENIE_API_KEYS": f"{KEY},sk-second"}, grpc_port=0, header_timeout_s=HEADER_TIMEOUT_S)


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_right_key_works_through_the_openai_client(server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    out = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
    assert out.usage.completion_tokens > 0


@pytest.mark.parametrize("key", ["sk-wrong", None], ids=["wrong", "none"])
def test_no_key_or_a_wrong_key_is_401(server, key: str | None) -> None:
    headers = None if key else {"Authorization": ""}
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "unused", max_retries=0, timeout=30,
                           default_headers=headers)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_health_and_metrics_stay_open_and_the_api_does_not(server) -> None:
    assert get(f"{server.url}/health/live")[0] == 200
    assert get(f"{server.url}/health/ready")[0] == 200
    assert get(f"{server.url}/v1/models")[0] == 401
    assert get(f"{server.url}/v1/models", "sk-second")[0] == 200
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        assert resp.status == 200


def test_grpc_needs_the_key(server) -> None:
    address = re.search(r"gRPC on (\S+?);", server.ready_line).group(1)
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        request = pb.GenerateRequest(prompt="Hello", max_tokens=2, ignore_eos=True)
        for metadata in ((), (("authorization", "Bearer sk-wrong"),)):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Generate(request, metadata=metadata, timeout=30))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                stub.Health(pb.HealthRequest(), metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        msgs = list(stub.Generate(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=30))
        assert msgs[-1].usage.completion_tokens == 2


def test_a_slow_request_head_is_cut_off(server) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /v1/chat/compl")
        t0 = time.monotonic()
        assert get(f"{server.url}/health/live")[0] == 200, "others are served meanwhile"
        slow.settimeout(HEADER_TIMEOUT_S + 3)
        assert slow.recv(1024) == b""
        assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 1.0


def test_the_key_never_reaches_the_log(server) -> None:
    assert KEY not in server.log_tail()


def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path) -> None:
    config = smollm2_config(host="0.0.0.0")
    with pytest.raises(Unavailable) as info:
        start_server(config, tmp_path, timeout=120, env={"GENIE_API_KEYS": ""})
    assert "no API key is set" in str(info.value) and "GENIE_API_KEYS" in str(info.value)
