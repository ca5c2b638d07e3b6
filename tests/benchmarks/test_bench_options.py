"""Flag parsers of genie-bench serve: good values parse, bad ones name the flag and show a good example."""

from __future__ import annotations

import pytest

from genie.benchmarks.options import Slo, default_label, parse_concurrency, parse_goodput, parse_rates, parse_url


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("https://example.org/llm/v1/", "https://example.org/llm"),
    ],
)
def test_parse_url_strips_v1_and_slashes(text, url):
    assert parse_url(text) == url


@pytest.mark.parametrize("text", ["127.0.0.1:8000", "ftp://host", "http://", "http://host:notaport"])
def test_parse_url_rejects_what_is_not_an_http_url(text):
    with pytest.raises(ValueError, match="--url"):
        parse_url(text)


def test_default_label_is_host_and_port():
    assert default_label("http://127.0.0.1:8000") == "127.0.0.1:8000"


def test_parse_concurrency_sweep():
    assert parse_concurrency("1,8,32") == (1.0, 8.0, 32.0)


@pytest.mark.parametrize("text", ["", "0", "1,,2", "-1", "1.5", "a"])
def test_parse_concurrency_rejects(text):
    with pytest.raises(ValueError, match=r"--concurrency .* such as 1,8,32"):
        parse_concurrency(text)


def test_parse_rates():
    assert parse_rates("0.5,4") == (0.5, 4.0)


@pytest.mark.parametrize("text", ["0", "inf", "nan", "x", "-2"])
def test_parse_rates_rejects(text):
    with pytest.raises(ValueError, match="--request-rate"):
        parse_rates(text)


def test_parse_goodput():
    assert parse_goodput("ttft:500,tpot:50") == Slo(ttft_ms=500.0, tpot_ms=50.0)
    assert parse_goodput("e2e:2000") == Slo(e2e_ms=2000.0)
    assert parse_goodput("E2EL:1") == Slo(e2e_ms=1.0)


@pytest.mark.parametrize("text", ["ttft=500", "ttft:", "latency:5", "ttft:-1", "ttft:abc", ""])
def test_parse_goodput_rejects(text):
    with pytest.raises(ValueError, match="--goodput .*ttft:500,tpot:50"):
        parse_goodput(text)
