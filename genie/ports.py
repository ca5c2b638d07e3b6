"""Whether a TCP port can be listened on, asked before anything slow starts (models load for many seconds)."""

from __future__ import annotations

import socket

from genie.errors import ConfigError


FIX = "pick another port, or port 0 for a free one"


def check_port_free(host: str, port: int, what: str = "", fix: str = FIX) -> None:
    """Raises ConfigError, one line naming `what` listens where and `fix`, if host:port cannot be bound now.

    Port 0 always passes (the kernel picks). Probed as aiohttp and gRPC bind, with SO_REUSEADDR: a port whose
    last connections linger in TIME_WAIT can be taken over, while another live listener still fails on Linux.
    """
    bare = host.strip("[]")
    where = f"{what} on {host}:{port}" if what else f"on {host}:{port}"
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen {where}: unknown host ({exc.strerror})") from None
    if port == 0:
        return
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen {where}: {exc.strerror}; {fix}") from None
