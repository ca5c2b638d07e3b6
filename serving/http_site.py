"""Starting the HTTP door: the aiohttp runner, its connection limits, and HTTPS when TLS is configured."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from genie.config import ServingConfig
from genie.errors import ConfigError

from .http import HttpState, make_app
from .tls import server_ssl_context


def runner_options() -> dict[str, Any]:
    """AppRunner settings; the per-connection ones (header timeout, no decompression) are on the app."""
    return {
        "handler_cancellation": True,  # a client that goes away cancels its handler, which aborts its request
        "access_log": None,
    }


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_http(state: HttpState, serving: ServingConfig, port: int) -> tuple[web.AppRunner, str]:
    """Serves `make_app(state)` on serving.host:port (0 picks a free port); returns the runner and the base URL.

    The header timeout comes from serving; keys, protect_metrics and the body limit come from state.
    The caller owns the runner: `await runner.cleanup()` stops the door.
    """
    ssl_context = server_ssl_context(serving)
    app = make_app(replace(state, header_timeout_s=serving.header_timeout_s))
    runner = web.AppRunner(app, **runner_options())
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
