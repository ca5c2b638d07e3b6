"""Starting the HTTP door: the aiohttp runner, its connection limits, and HTTPS when TLS is configured."""

from __future__ import annotations

import asyncio
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
        "access_log": None,  # aiohttp's own line has no model or tokens; genie.access writes ours
    }


class _Site(web.TCPSite):
    """A TCPSite whose TLS handshake is bounded too: a client that opens a connection and never finishes the
    handshake is cut off after `handshake_timeout_s` (aiohttp's own timer starts only after the handshake)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, ssl_context: Any, handshake_timeout_s: float):
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        if self._ssl_context is None:
            return await super().start()
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would open a server without the bound
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout_s,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def start_http(state: HttpState, serving: ServingConfig, port: int) -> tuple[web.AppRunner, str]:
    """Serves `make_app(state)` on serving.host:port (0 picks a free port); returns the runner and the base URL.

    The header (and TLS handshake) timeout comes from serving; keys, protect_metrics and the body limit from state.
    The caller owns the runner: `await runner.cleanup()` stops the door.
    """
    ssl_context = server_ssl_context(serving)
    app = make_app(state, header_timeout_s=serving.header_timeout_s, access_log=serving.access_log)
    runner = web.AppRunner(app, **runner_options())
    await runner.setup()
    site = _Site(runner, serving.host, port, ssl_context, serving.header_timeout_s)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen for HTTP on {serving.host}:{port}: {exc.strerror}; choose another serving.http_port "
            "(0 picks a free one) or host"
        ) from None
    scheme = "https" if ssl_context is not None else "http"
    return runner, f"{scheme}://{url_host(serving.host)}:{site.port}"
