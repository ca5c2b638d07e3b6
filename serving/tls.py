"""TLS material for the front doors, read once from serving.tls_cert / serving.tls_key (PEM files)."""

from __future__ import annotations

import ssl
from pathlib import Path

from genie.config import ServingConfig
from genie.errors import ConfigError


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def tls_pair(serving: ServingConfig) -> tuple[bytes, bytes] | None:
    """(certificate chain PEM, private key PEM), or None when TLS is off."""
    if serving.tls_cert is None or serving.tls_key is None:
        return None
    return _read(serving.tls_cert, "serving.tls_cert"), _read(serving.tls_key, "serving.tls_key")


def server_ssl_context(serving: ServingConfig) -> ssl.SSLContext | None:
    """A TLS 1.2+ server context for HTTPS, or None when TLS is off."""
    if serving.tls_cert is None or serving.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(Path(serving.tls_cert).expanduser(), Path(serving.tls_key).expanduser())
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use serving.tls_cert {serving.tls_cert} with serving.tls_key {serving.tls_key}: {exc}; "
            "both must be PEM files and the key must belong to the certificate"
        ) from None
    return context
