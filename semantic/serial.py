"""Dataclass <-> JSON-able dict conversion driven by type hints.

Profiles, plans and cluster specs are cached in the registry as JSON; `from_jsonable` rebuilds them and refuses
unknown or missing keys with a message naming the field, so a stale or hand-edited record fails loudly.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def from_jsonable(tp: Any, data: Any, where: str = "") -> Any:
    """Rebuild a value of type `tp` from `data`; `where` names the field path for error messages."""
    where = where or getattr(tp, "__name__", str(tp))
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, data, where)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in get_args(tp):
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return from_jsonable(inner[0], data, where)
    if origin in (list, tuple):
        if not isinstance(data, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        item = get_args(tp)[0]
        values = [from_jsonable(item, x, f"{where}[{i}]") for i, x in enumerate(data)]
        return values if origin is list else tuple(values)
    if origin is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        _, vt = get_args(tp)
        return {k: from_jsonable(vt, v, f"{where}.{k}") for k, v in data.items()}
    return _scalar(tp, data, where)


def _dataclass(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in data:
            kwargs[f.name] = from_jsonable(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)


def _scalar(tp: Any, data: Any, where: str) -> Any:
    if tp is Any or tp is typing.Any:
        return data
    if tp is float and isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if tp in (int, str, bool) and type(data) is tp:
        return data
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {data!r}")
