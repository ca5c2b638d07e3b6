"""The server's prefix-cache counters, scraped from its Prometheus `GET /metrics` before and after a level.

genie-serve counts prompt tokens: `genie_prefix_cache_queries_total` for every prompt token it looked up and
`genie_prefix_cache_hits_total` for those whose KV it found cached. A level's hit rate is the ratio of the two
counters' growth over the level. A server without them, without /metrics, or with /metrics behind a key this
run does not have, reports no hit rate; scraping never fails a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

HITS = "genie_prefix_cache_hits_total"
QUERIES = "genie_prefix_cache_queries_total"
SCRAPE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """Prompt tokens, summed over every label set (worker, model, ...) the server exposes."""

    hits: float
    queries: float


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one level added to the counters."""

    hit_tokens: int
    query_tokens: int

    @property
    def hit_rate(self) -> float | None:
        return self.hit_tokens / self.query_tokens if self.query_tokens > 0 else None


def _sample(line: str) -> tuple[str, float] | None:
    """`name{labels} value [timestamp]` -> (name, value); None for comments, blanks and unreadable lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if "{" in line:
        name, _, rest = line.partition("{")
        rest = rest.rpartition("}")[2]
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    try:
        return name.strip(), float(fields[0])
    except (IndexError, ValueError):
        return None


def parse_counters(text: str) -> CacheCounters | None:
    """The two counters from Prometheus text; None unless both are there."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        sample = _sample(line)
        if sample is not None and sample[0] in (HITS, QUERIES):
            totals[sample[0]] = totals.get(sample[0], 0.0) + sample[1]
    if HITS not in totals or QUERIES not in totals:
        return None
    return CacheCounters(totals[HITS], totals[QUERIES])


async def scrape(url: str, headers: dict[str, str], timeout_s: float = SCRAPE_TIMEOUT_S) -> CacheCounters | None:
    """The counters at `url`/metrics now, or None when they cannot be read there (for any reason)."""
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(f"{url}/metrics") as response:
                if response.status != 200:
                    return None
                text = await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, ValueError, UnicodeError):
        return None
    return parse_counters(text)


def cache_use(before: CacheCounters | None, after: CacheCounters | None) -> CacheUse | None:
    """The growth between two scrapes; None when either is missing or a counter went back (a restart)."""
    if before is None or after is None:
        return None
    hits, queries = after.hits - before.hits, after.queries - before.queries
    if hits < 0 or queries < 0:
        return None
    return CacheUse(round(hits), round(queries))
