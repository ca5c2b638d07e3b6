"""A quick `GET /v1/models` before a run, so that a wrong URL fails in seconds rather than per request."""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from .client import connect_reason, error_message

PROBE_TIMEOUT_S = 5.0


class Unreachable(Exception):
    """The server cannot be used at all; the message says what to check."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    models: tuple[str, ...] | None  # None when the server does not list its models
    warning: str | None


def _served_models(payload: object) -> tuple[str, ...] | None:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return tuple(str(item["id"]) for item in data if isinstance(item, dict) and "id" in item)


def _check_model(url: str, model: str, models: tuple[str, ...] | None) -> str | None:
    if models is None:
        return f"{url}/v1/models did not list any models; going on with --model {model!r}"
    if model not in models:
        served = ", ".join(models) or "none"
        return f"--model {model!r} is not among the models {url} lists ({served}); requests may fail"
    return None


async def probe(url: str, model: str, headers: dict[str, str], timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Raise `Unreachable` when nothing usable answers at `url`; otherwise report what it serves."""
    endpoint = f"{url}/v1/models"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            async with session.get(endpoint) as response:
                status = response.status
                text = await response.text(errors="replace")
    except aiohttp.ClientConnectorError as err:
        raise Unreachable(f"cannot reach {url}: {connect_reason(err)}. Is the server running, and is --url right?") from None
    except TimeoutError:
        raise Unreachable(
            f"{url} did not answer GET /v1/models within {timeout_s:g} s. Is it an OpenAI-compatible server, "
            "and is it up?"
        ) from None
    except aiohttp.ClientError as err:
        raise Unreachable(f"cannot talk to {url}: {err}. Is --url right?") from None
    if status in (401, 403):
        raise Unreachable(f"{url} refused the request (HTTP {status}); pass --api-key or set OPENAI_API_KEY")
    if status == 404:
        return ProbeResult(None, f"{endpoint} answered 404; going on, but is --url the server's base URL?")
    if status != 200:
        detail = error_message(None, text.strip())
        return ProbeResult(None, f"{endpoint} answered HTTP {status} ({detail}); going on, but requests may fail")
    try:
        models = _served_models(json.loads(text))
    except ValueError:
        models = None
    return ProbeResult(models, _check_model(url, model, models))
