"""What the client raises: one family, whichever transport carried the call."""

from __future__ import annotations

from genie.errors import GenieError, InvalidRequest, NotFound, Unavailable


class ClientError(GenieError):
    """genie-serve or the worker failed a call the client cannot retry."""

    http_status = 500
    grpc_code = "INTERNAL"


class ProgramRefused(InvalidRequest):
    """The worker refused a program (an op off its allowlist, or a malformed program): run it locally."""


class AutogradOutOfScope(RuntimeError):
    """backward() reached a graph that ran on a genie worker."""


class NotConnected(Unavailable):
    """No genie-serve is named: call genie.connect(url) or set GENIE_URL."""


__all__ = ["AutogradOutOfScope", "ClientError", "NotConnected", "NotFound", "ProgramRefused", "Unavailable"]
