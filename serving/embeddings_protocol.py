"""OpenAI `POST /v1/embeddings`: the JSON body in, a validated request out; vectors in, the response dict out.

Every problem raises `InvalidRequest` naming the field and what to send instead. As in `protocol.py`,
unknown top-level keys are ignored and a JSON null reads as the field left out.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from genie.errors import InvalidRequest
from genie.serving.protocol import INT32_MAX, check_text, show

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
ENCODING_FORMATS = ("float", "base64")
_FORMS = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: tuple[str, ...] | tuple[tuple[int, ...], ...]  # one entry per input, never empty
    token_input: bool  # True: inputs are token-id tuples
    encoding_format: str  # "float" or "base64"
    dimensions: int | None  # None: the model's own size
    user: str | None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens(values: list, where: str) -> tuple[int, ...]:
    if not values:
        raise InvalidRequest(f"'{where}' is an empty list; give at least one token id")
    for i, token in enumerate(values):
        if not _is_token(token):
            raise InvalidRequest(
                f"'{where}[{i}]' must be a token id (an integer), got {_type_name(token)} {show(token)}"
            )
        if not 0 <= token <= INT32_MAX:
            raise InvalidRequest(f"'{where}[{i}]' must be a token id between 0 and {INT32_MAX}, got {show(token)}")
    return tuple(values)


def _text(value: str, where: str) -> str:
    if value == "":
        raise InvalidRequest(f"'{where}' is an empty string; send some text")
    return check_text(value, where)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if _is_token(value):
        return "token id"
    if isinstance(value, list):
        return "list of token ids"
    return _type_name(value)


def _inputs(value: Any) -> tuple[tuple[str, ...] | tuple[tuple[int, ...], ...], bool]:
    if value is None:
        raise InvalidRequest(f"'input' is required: {_FORMS}")
    if isinstance(value, str):
        return (_text(value, "input"),), False
    if not isinstance(value, list):
        raise InvalidRequest(f"'input' must be {_FORMS}, got {_type_name(value)}")
    if not value:
        raise InvalidRequest("'input' is an empty list; give at least one string")
    first = _kind(value[0])
    if first not in ("string", "token id", "list of token ids"):
        raise InvalidRequest(f"'input[0]' must be a string, a token id or a list of token ids, got {first}")
    if first != "token id" and len(value) > MAX_INPUTS:  # a flat list is one input of many tokens
        raise InvalidRequest(f"'input' holds {len(value)} inputs; send at most {MAX_INPUTS} per request")
    for i, item in enumerate(value):
        if _kind(item) != first:
            raise InvalidRequest(
                f"'input[{i}]' is a {_kind(item)} but 'input[0]' is a {first}; "
                "'input' must hold one kind: all strings, all token ids, or all lists of token ids"
            )
    if first == "token id":
        return (_tokens(value, "input"),), True
    if first == "string":
        return tuple(_text(s, f"input[{i}]") for i, s in enumerate(value)), False
    return tuple(_tokens(t, f"input[{i}]") for i, t in enumerate(value)), True


def _model(body: dict, default_model: str | None) -> str:
    model = body.get("model")
    if model is None and default_model is not None:
        return default_model
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string; GET /v1/models lists the served models")
    return model


def _encoding_format(body: dict) -> str:
    value = body.get("encoding_format")
    if value is None:
        return "float"
    if not isinstance(value, str) or value not in ENCODING_FORMATS:
        raise InvalidRequest(f"'encoding_format' must be \"float\" or \"base64\", got {show(value)}")
    return value


def _dimensions(body: dict) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if not _is_token(value) or not 1 <= value <= INT32_MAX:
        raise InvalidRequest(f"'dimensions' must be a positive integer, got {_type_name(value)} {show(value)}")
    return value


def _user(body: dict) -> str | None:
    value = body.get("user")
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'user' must be a string, got {_type_name(value)}")
    return value


def parse_embeddings(body: Any, default_model: str | None = None) -> EmbeddingsRequest:
    """Validates a decoded JSON body; `default_model` stands in for a missing 'model'."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    inputs, token_input = _inputs(body.get("input"))
    return EmbeddingsRequest(
        model=_model(body, default_model),
        inputs=inputs,
        token_input=token_input,
        encoding_format=_encoding_format(body),
        dimensions=_dimensions(body),
        user=_user(body),
    )


def encode_base64(vector: np.ndarray) -> str:
    """The little-endian float32 bytes of `vector`, base64: what the openai client reads with np.frombuffer."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embeddings_response(model: str, vectors: np.ndarray, encoding_format: str, prompt_tokens: int) -> dict:
    """OpenAI's response body for `vectors` [N, D], one row per input in order.

    Both formats carry the float32 values, so a "float" answer equals the decoded "base64" one.
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be [N, D], got shape {vectors.shape}")
    if encoding_format not in ENCODING_FORMATS:
        raise ValueError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
    rows = vectors.astype(np.float32, copy=False)
    if encoding_format == "base64":
        embeddings: list = [encode_base64(row) for row in rows]
    else:
        embeddings = rows.tolist()  # float32 -> Python floats, exactly
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
