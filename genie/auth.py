"""Credentials shared by every door and link: API keys for clients, one link token for the worker links.

Keys and tokens never travel on a command line and never reach a log: launched workers get their link token
through the environment (`LINK_TOKEN_ENV`), and comparisons run in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from genie.errors import ConfigError

API_KEYS_ENV = "GENIE_API_KEYS"  # comma-separated client API keys, added to serving.api_keys_file's
LINK_TOKEN_ENV = "GENIE_WORKER_TOKEN"  # the worker link credential, handed to launched workers
LINK_METADATA_KEY = "authorization"  # gRPC metadata key, as on the front doors: "Bearer TOKEN"


class KeySet:
    """A set of accepted secrets, checked in constant time; an empty set accepts everything."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = tuple(sorted({k for k in keys if k}))

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def accepts(self, presented: str | None) -> bool:
        """True for a known key; compares with every key so the time says nothing about which one matched."""
        if not self._keys:
            return True
        given = (presented or "").encode()
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(given, key.encode())
        return found

    def accepts_header(self, header: str | None) -> bool:
        """Checks an `Authorization: Bearer KEY` value."""
        return self.accepts(bearer(header))


def bearer(header: str | None) -> str | None:
    """The key in "Bearer KEY" (scheme case-insensitive), or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def read_key_file(path: str | os.PathLike[str], what: str) -> list[str]:
    """One key per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{what} {path} holds no key; put one key per line")
    return keys


def load_api_keys(keys_file: str | None, environ: Mapping[str, str] = os.environ) -> KeySet:
    """serving.api_keys_file plus $GENIE_API_KEYS."""
    keys = read_key_file(keys_file, "serving.api_keys_file") if keys_file else []
    keys += [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    return KeySet(keys)


def new_link_token() -> str:
    """A fresh random worker-link credential (256 bits)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: KeySet) -> None:
    """Refuses to listen beyond this machine with no API key."""
    if not keys and not is_loopback(host):
        raise ConfigError(
            f"serving.host is {host!r} but no API key is set, so anyone who can reach this machine could use it; "
            f"set {API_KEYS_ENV}=KEY1,KEY2 or serving.api_keys_file (one key per line), or listen on 127.0.0.1"
        )


def link_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries a link token on a worker call."""
    return ((LINK_METADATA_KEY, f"Bearer {token}"),)


def read_link_token(path: str | os.PathLike[str], what: str = "workers.link_token_file") -> str:
    """The link token in `path` (its first key line); `what` names the setting in error messages."""
    return read_key_file(path, what)[0]
