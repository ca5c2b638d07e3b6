"""Guides as text: checks a guide (kind, spec) and builds its xgrammar Grammar without a tokenizer.

The front door runs `parse_grammar` to answer a bad schema, regex or grammar with a 400 before the request is
queued; the worker compiles the same Grammar against its tokenizer (engine/guides.py). Importing this module
loads nothing: xgrammar is imported on first use.
"""

from __future__ import annotations

import json
import re
from typing import Any

from genie.workers.contract import GUIDE_KINDS

_WHERE = re.compile(r"^\[[0-9:]+\] \S+\.(cc|h):\d+: ")
# JSON-schema keywords xgrammar would pass over without enforcing them: refused rather than ignored
UNSUPPORTED_SCHEMA_KEYWORDS = frozenset({
    "not", "if", "then", "else", "dependentSchemas", "dependentRequired", "dependencies", "contains",
    "minContains", "maxContains", "unevaluatedProperties", "unevaluatedItems", "uniqueItems", "$dynamicRef",
    "propertyNames",
})
# keywords whose value maps names to subschemas: the names are not keywords
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})

def xgrammar_module() -> Any:
    import xgrammar

    return xgrammar


def guide_error(exc: BaseException) -> str:
    """xgrammar's message without its "[hh:mm:ss] /project/cpp/file.cc:123: " prefix."""
    text = _WHERE.sub("", str(exc).strip(), count=1)
    return text.removeprefix("Check failed: (error.empty()) is false: ").strip()


def parse_grammar(kind: str, spec: str) -> Any:
    """Checks a guide without a tokenizer (cheap: no token masks are built) and returns its xgrammar Grammar.
    Raises ValueError with a message that says what is wrong."""
    xgr = xgrammar_module()
    if kind not in GUIDE_KINDS:
        raise ValueError(f"guide kind must be one of {', '.join(GUIDE_KINDS)}, got {kind!r}")
    try:
        # compact JSON (", " and ": " between items, no other whitespace): a small model cannot wander off
        # into endless newlines, and the text still parses as the same JSON
        if kind == "json":  # OpenAI's json_object: any JSON object
            return xgr.Grammar.from_json_schema('{"type": "object"}', strict_mode=False, any_whitespace=False)
        if kind == "json_schema":
            check_schema_keywords(json.loads(spec))
            return xgr.Grammar.from_json_schema(spec, strict_mode=True, any_whitespace=False)
        if kind == "regex":
            return xgr.Grammar.from_regex(spec)
        if kind == "choice":
            return xgr.Grammar.from_regex(choice_regex(json.loads(spec)))
        return xgr.Grammar.from_ebnf(spec)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(guide_error(exc)) from None


def check_schema_keywords(schema: Any, path: str = "#") -> None:
    """Raises ValueError naming the first keyword of `schema` that constrained decoding cannot enforce."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema_keywords(item, f"{path}/{i}")
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in UNSUPPORTED_SCHEMA_KEYWORDS:
            raise ValueError(f"the JSON-schema keyword '{key}' (at {path}) is not supported by constrained "
                             "decoding; remove it, or express it with enum, anyOf or required")
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema_keywords(sub, f"{path}/{key}/{name}")
        elif isinstance(value, (dict, list)) and key not in ("enum", "const", "default", "examples"):
            check_schema_keywords(value, f"{path}/{key}")


def choice_regex(choices: list[str]) -> str:
    """A regex that matches exactly one of `choices` (each escaped)."""
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choices must be a non-empty list of non-empty strings")
    return "(" + "|".join(_escape(c) for c in choices) + ")"


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in r"\.^$|?*+()[]{}/-" else ch for ch in text)
