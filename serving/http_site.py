"""Starting the HTTP door: the aiohttp runner, its connection limits, and HTTPS when TLS is configured."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from genie.config import ServingConfig
from genie.errors import ConfigError

from .http import HttpState, make_app
from .tls import server_ssl_context


def runner_options(serving: ServingConfig) -> dict[str, Any]:
    """aiohttp request-handler settings; tests pass the same ones to their in-process servers."""
    return {
        "handler_cancellation": True,  # a client that goes away cancels its handler, which aborts its request
        "access_log": None,
        # aiohttp arms this timer when a connection opens and only resets it after a response, so a client
        # that has not sent a whole request head by then is cut off (slow-header / slowloris); between
        # keep-alive requests it bounds idle time the same way.
        "keepalive_timeout": serving.header_timeout_s,
        # Compressed bodies are refused with 415 in http_guard; never inflate them (no decompression bombs).
        "auto_decompress": False,
    }


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_http(state: HttpState, serving: ServingConfig, port: int) -> tuple[web.AppRunner, str]:
    """Serves `make_app(state)` on serving.host:port (0 picks a free port); returns the runner and the base URL.

    The caller owns the runner: `await runner.cleanup()` stops the door.
    """
    ssl_context = server_ssl_context(serving)
    runner = web.AppRunner(make_app(state), **runner_options(serving))
    await runner.setup()
    site = web.TCPSite(runner, serving.host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen for HTTP on {serving.host}:{port}: {exc.strerror}; choose another serving.http_port "
            "(0 picks a free one) or host"
        ) from None
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{url_host(serving.host)}:{bound}"
