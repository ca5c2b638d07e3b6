"""Exception types for user mistakes, shared by every layer.

Front doors map them to a status in one place (HTTP 4xx, gRPC status codes, a CLI exit code);
messages say what was wrong and how to fix it. `assert` stays for internal invariants.
"""


class GenieError(Exception):
    """Base of the errors a user can cause and fix."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ConfigError(GenieError):
    """A config file or value is invalid."""


class InvalidRequest(GenieError):
    """A request is malformed or out of range."""


class NotFound(GenieError):
    """A model, version, alias, fragment or sequence does not exist."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class AlreadyExists(GenieError):
    http_status = 409
    grpc_code = "ALREADY_EXISTS"


class ResourceExhausted(GenieError):
    """Out of KV blocks, queue slots or memory; the caller may retry later."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(GenieError):
    """A worker or dependency is down."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
