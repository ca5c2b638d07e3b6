"""Model names, versions, aliases and references such as ``smollm2:3`` or ``smollm2@prod``.

Names become folder names and URL parts, so they are checked before anything touches the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from genie.errors import InvalidRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # model, alias and served-model names (genie.config too)
_REF_RE = re.compile(r"^([^:@]*)(?:([:@])(.*))?$", re.DOTALL)
_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"


def check_name(name: str, what: str = "model name") -> str:
    """Returns `name` if it is a safe model or alias name, else raises InvalidRequest saying why."""
    if not name:
        raise InvalidRequest(f"the {what} is empty; use {_NAME_RULE}")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidRequest(f"{what} {name!r} may not contain '/', '\\' or '..'; use {_NAME_RULE}")
    if not NAME_RE.match(name):
        raise InvalidRequest(f"{what} {name!r} is not allowed; use {_NAME_RULE}")
    return name


def check_alias(alias: str) -> str:
    check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidRequest(f"alias {alias!r} is all digits and would read as a version number; add a letter")
    return alias


def parse_version(text: str | int) -> int:
    """A version number: a positive integer, given as int or decimal string."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    if isinstance(text, str) and text.isdigit() and int(text) > 0:
        return int(text)
    raise InvalidRequest(f"version must be a positive whole number such as 3, got {text!r}")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``; `selector` is a version, an alias or None."""

    name: str
    selector: int | str | None = None

    def __str__(self) -> str:
        if self.selector is None:
            return self.name
        sep = ":" if isinstance(self.selector, int) else "@"
        return f"{self.name}{sep}{self.selector}"


def parse_ref(text: str) -> ModelRef:
    """Parses ``NAME[:VERSION|@ALIAS]``."""
    name, sep, rest = _REF_RE.match(text).groups(default="")
    check_name(name)
    if not sep:
        return ModelRef(name)
    if not rest:
        raise InvalidRequest(f"{text!r} ends with {sep!r}; write NAME, NAME:VERSION or NAME@ALIAS")
    if sep == ":":
        return ModelRef(name, parse_version(rest))
    return ModelRef(name, check_alias(rest))


def selector_from(version_or_alias: str | int | None) -> int | str | None:
    """Reads the router's `version_or_alias`: digits are a version number, anything else an alias."""
    if version_or_alias is None:
        return None
    if isinstance(version_or_alias, int) or version_or_alias.isdigit():
        return parse_version(version_or_alias)
    return check_alias(version_or_alias)


def human_count(n: int) -> str:
    """134515008 -> '134.5M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
