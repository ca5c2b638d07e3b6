"""Exception types for user mistakes, shared by every layer.

Front doors map them to a status in one place (HTTP 4xx, gRPC status codes, a CLI exit code);
messages say what was wrong and how to fix it. `assert` stays for internal invariants.

Each error also carries what OpenAI's error object names: `code`, a short string a client can branch on
(`model_not_found`, `unsupported_parameter`, ...), and `param`, the request field at fault, or None.
"""

from __future__ import annotations

import re

# The code an error gets by its HTTP status when neither its class nor its raiser names one.
STATUS_CODES = {
    400: "invalid_request", 401: "invalid_api_key", 403: "permission_denied", 404: "not_found",
    409: "conflict", 413: "request_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded",
    500: "server_error", 503: "service_unavailable",
}

# A message that opens by quoting a request field: 'temperature' ..., 'messages[0].content' ..., 'x.y' ...
_LEADING_FIELD = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\]|\.[A-Za-z_][A-Za-z0-9_]*)*)'")


def status_code(status: int) -> str:
    return STATUS_CODES.get(status, "server_error" if status >= 500 else "invalid_request")


def leading_field(message: str) -> str | None:
    """The field a message names first, when it opens by quoting one ("'top_p' must be ..." -> "top_p")."""
    found = _LEADING_FIELD.match(message)
    return found.group(1) if found else None


class GenieError(Exception):
    """Base of the errors a user can cause and fix.

    param: the request field at fault (OpenAI's `param`); code: overrides the class's `default_code`.
    """

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    default_code: str | None = None  # None: by http_status (STATUS_CODES)

    def __init__(self, message: str = "", *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code or self.default_code or status_code(self.http_status)


class ConfigError(GenieError):
    """A config file or value is invalid."""

    default_code = "invalid_config"


class InvalidRequest(GenieError):
    """A request is malformed or out of range.

    Without `param`, the field a message opens by quoting is taken ("'top_p' must be in (0, 1]" names
    top_p); a raiser that knows the field should still pass it. With a field, the code is OpenAI's
    `invalid_value`.
    """

    def __init__(self, message: str = "", *, param: str | None = None, code: str | None = None) -> None:
        param = param or leading_field(message)
        super().__init__(message, param=param, code=code or ("invalid_value" if param else None))


class NotFound(GenieError):
    """A model, version, alias, fragment or sequence does not exist."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class AlreadyExists(GenieError):
    http_status = 409
    grpc_code = "ALREADY_EXISTS"
    default_code = "already_exists"


class ResourceExhausted(GenieError):
    """Out of KV blocks, queue slots or memory; the caller may retry later."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(GenieError):
    """A worker or dependency is down."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
