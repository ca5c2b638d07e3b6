"""Options of `genie-bench serve`: parsed from flags once, then passed around as frozen data.

The parsers here raise `ValueError` with a message that names the flag, the value and an example of a good
one; the CLI turns that into a one-line error and exit status 2.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class Endpoint(enum.StrEnum):
    CHAT = "chat"
    COMPLETIONS = "completions"

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is Endpoint.CHAT else "/v1/completions"


class Dataset(enum.StrEnum):
    DEFAULT = "default"  # the built-in set, --prompts FILE or --input-len synthetic prompts
    PREFIX = "prefix"  # one shared system prompt of --prefix-len tokens, then a distinct question per request
    MULTITURN = "multiturn"  # conversations of --turns turns, each resending the history with the real replies


class LoadMode(enum.StrEnum):
    CONCURRENCY = "concurrency"  # closed loop: N requests in flight at all times
    RATE = "rate"  # open loop: Poisson arrivals at R requests/s


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives for goodput, in milliseconds; None means no limit on that metric."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None


@dataclass(frozen=True, slots=True)
class ServeOptions:
    url: str  # base URL without /v1, e.g. http://127.0.0.1:8000
    model: str
    label: str
    endpoint: Endpoint
    mode: LoadMode
    levels: tuple[float, ...]  # concurrencies (whole numbers) or request rates in requests/s
    num_prompts: int
    output_len: int
    input_len: int | None  # None: the built-in prompt set (or --prompts FILE)
    prompts_file: Path | None
    ignore_eos: bool
    temperature: float
    slo: Slo
    max_concurrency: int | None  # cap on requests in flight in rate mode
    seed: int
    timeout_s: float
    output_dir: Path
    plot: bool
    progress: bool
    dataset: Dataset = Dataset.DEFAULT
    prefix_len: int | None = None  # tokens of the system prompt with --dataset prefix or multiturn
    turns: int | None = None  # turns per conversation with --dataset multiturn; num_prompts counts conversations
    api_key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("api_key")  # a secret never goes into a results file
        data["endpoint"] = str(self.endpoint)
        data["mode"] = str(self.mode)
        data["dataset"] = str(self.dataset)
        data["levels"] = list(self.levels)
        data["slo"] = asdict(self.slo)
        data["prompts_file"] = str(self.prompts_file) if self.prompts_file else None
        data["output_dir"] = str(self.output_dir)
        return data


def parse_url(text: str) -> str:
    """`http://host:port[/v1][/]` -> `http://host:port`; the /v1 prefix is added per request."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must look like http://HOST:PORT, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"--url has a bad port: {text!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def default_label(url: str) -> str:
    return urlsplit(url).netloc


def parse_concurrency(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        levels = ()
    if not levels or any(level <= 0 for level in levels):
        raise ValueError(f"--concurrency takes positive integers separated by commas such as 1,8,32, got {text!r}")
    return tuple(float(level) for level in levels)


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        rates = ()
    if not rates or any(not rate > 0 or rate == float("inf") for rate in rates):
        raise ValueError(f"--request-rate takes positive requests/s separated by commas such as 2 or 1,4,16, got {text!r}")
    return rates


SLO_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2e": "e2e_ms", "e2el": "e2e_ms"}


def parse_goodput(text: str) -> Slo:
    """`ttft:500,tpot:50` -> Slo(ttft_ms=500, tpot_ms=50)."""
    limits: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition(":")
        name = SLO_KEYS.get(key.strip().lower())
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or name is None or not number > 0:
            raise ValueError(
                f"--goodput takes METRIC:MILLISECONDS pairs with METRIC in ttft, tpot, e2e, "
                f"such as ttft:500,tpot:50; got {text!r}"
            )
        limits[name] = number
    return Slo(**limits)


def positive_int(flag: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value}")
