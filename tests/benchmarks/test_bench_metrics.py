"""Reading the server's prefix-cache counters from Prometheus text, and scraping them over HTTP."""

from __future__ import annotations

import socket

from genie.benchmarks.options import Slo
from genie.benchmarks.report import hit_rate_text
from genie.benchmarks.server_metrics import CacheCounters, CacheUse, cache_use, parse_counters, scrape
from genie.benchmarks.summary import summarize

TEXT = """# HELP genie_prefix_cache_hits_total Prompt tokens whose KV was found cached.
# TYPE genie_prefix_cache_hits_total counter
genie_prefix_cache_hits_total{worker="w0"} 120.0
genie_prefix_cache_hits_total{worker="w1",model="m"} 30 1700000000000
genie_prefix_cache_hits_created{worker="w0"} 1.7e9
genie_prefix_cache_queries_total 600
genie_prefix_cache_queries_totally_other 5
"""


def test_counters_are_summed_over_label_sets():
    assert parse_counters(TEXT) == CacheCounters(150.0, 600.0)


def test_missing_counters_give_none():
    assert parse_counters("genie_requests_total 3\n") is None
    assert parse_counters("genie_prefix_cache_hits_total 3\n") is None  # queries absent
    assert parse_counters("") is None
    assert parse_counters("genie_prefix_cache_hits_total{x=\"1\"} nope\ngenie_prefix_cache_queries_total 1") is None


def test_use_over_a_level():
    use = cache_use(CacheCounters(100, 400), CacheCounters(190, 500))
    assert use == CacheUse(90, 100) and use.hit_rate == 0.9
    assert cache_use(None, CacheCounters(1, 1)) is None
    assert cache_use(CacheCounters(100, 400), CacheCounters(0, 10)) is None  # the server restarted
    assert CacheUse(0, 0).hit_rate is None


async def test_scrape_reads_a_server_that_has_the_counters(standin):
    server = standin(prefix_cache=True)
    assert await scrape(server.url, {}) == CacheCounters(0.0, 0.0)


async def test_scrape_of_a_server_without_them_or_behind_a_key_is_none(standin):
    assert await scrape(standin().url, {}) is None
    assert await scrape(standin(prefix_cache=True, metrics_status=401).url, {}) is None
    assert await scrape(f"{standin().url}/nowhere", {}) is None  # 404


async def test_scrape_of_a_closed_port_is_none():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await scrape(f"http://127.0.0.1:{port}", {}) is None


def test_the_table_tells_no_counters_from_no_lookups():
    assert hit_rate_text(summarize([], 1.0, Slo(), None)) == "n/a"
    assert hit_rate_text(summarize([], 1.0, Slo(), CacheUse(0, 0))) == "no lookups"  # caching off
    summary = summarize([], 1.0, Slo(), CacheUse(5, 20))
    assert hit_rate_text(summary) == "25.0%" and summary.prefix_cache_hit_tokens == 5
