"""TLS on a real genie-serve: serving.tls_cert / tls_key (a self-signed pair made here) serve HTTPS and gRPC
over TLS only; the real `openai` client trusts the certificate and talks to it."""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.request

import grpc
import openai
import pytest
from tls_certs import self_signed

from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_server(serve_smollm2, tmp_path_factory):
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    server = serve_smollm2(tls_cert=str(cert), tls_key=str(key), grpc_port=0)
    https = re.search(r" at (https://\S+?)/v1 ", server.ready_line)
    grpc_address = re.search(r"gRPC on (\S+?);", server.ready_line)
    assert https and grpc_address, server.ready_line
    return https.group(1), grpc_address.group(1), cert


def test_https_with_the_openai_client(tls_server) -> None:
    url, _, cert = tls_server
    trust = ssl.create_default_context(cafile=str(cert))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                           http_client=openai.DefaultHttpxClient(verify=trust, timeout=60))
    out = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert out.usage.completion_tokens > 0


def test_plain_http_is_not_served(tls_server) -> None:
    url, _, _ = tls_server
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url.replace("https://", "http://") + "/health/live", timeout=5).read()


def test_grpc_over_tls(tls_server) -> None:
    _, address, cert = tls_server
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(address, creds) as channel:
        health = inference_pb2_grpc.InferenceStub(channel).Health(pb.HealthRequest(), timeout=10)
        assert health.live
    with grpc.insecure_channel(address) as plain:
        with pytest.raises(grpc.RpcError) as info:
            inference_pb2_grpc.InferenceStub(plain).Health(pb.HealthRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
