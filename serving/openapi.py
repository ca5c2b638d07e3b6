"""The OpenAPI 3 description of the HTTP door, served at GET /openapi.json.

The request schemas state the same limits `protocol.parse_chat` / `parse_completion` enforce; the tests feed
bodies generated from this spec to those parsers, and check every route of `make_app` is described here.
"""

from __future__ import annotations

from typing import Any

from .generation import ServedModel
from .embeddings_protocol import MAX_INPUTS as MAX_EMBEDDING_INPUTS
from .openai_params import CHAT, COMPLETIONS, Support, params_of
from .choices import MAX_CHOICES
from .structured import MAX_CHOICES as MAX_GUIDED_CHOICES, MAX_GUIDE_CHARS
from .programs import program_paths
from .protocol import (BIAS_RANGE, INT32_MAX, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_REPETITION_PENALTY, MAX_STOP_SEQUENCES,
                       MAX_STOP_TOKEN_IDS, PENALTY_RANGE)

_JSON = "application/json"
ERROR_STATUSES = {
    "400": "The request is malformed or out of range; the message names the field.",
    "401": "An API key is needed (Authorization: Bearer KEY), or the one sent is not known.",
    "404": "The model is not served here (code model_not_found); GET /v1/models lists those that are.",
    "413": "The body is larger than serving.max_body_mib.",
    "415": "The body is not application/json, or it is compressed.",
    "429": "The queue is full; retry after the Retry-After seconds.",
    "503": "The server is draining, or no worker can serve the request.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _sampling(model: ServedModel) -> dict[str, Any]:
    """Fields both completion endpoints take, with the ranges the door checks."""
    stop_text = {"type": "string", "minLength": 1}
    return {
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": model.max_context - 1,
                       "description": "tokens to generate at most; prompt + max_tokens must fit the context"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "description": "0 is greedy"},
        "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0, "maximum": INT32_MAX, "description": "0 disables"},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_CHOICES, "description": "choices to generate"},
        "stop": {"oneOf": [stop_text, {"type": "array", "items": stop_text, "maxItems": MAX_STOP_SEQUENCES}]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "ignore_eos": {"type": "boolean", "description": "keep generating past the end-of-sequence token"},
        "frequency_penalty": {"type": "number", "minimum": -PENALTY_RANGE, "maximum": PENALTY_RANGE},
        "presence_penalty": {"type": "number", "minimum": -PENALTY_RANGE, "maximum": PENALTY_RANGE},
        "repetition_penalty": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                               "maximum": MAX_REPETITION_PENALTY, "description": "1 disables (vLLM's)"},
        "logit_bias": {"type": "object", "maxProperties": MAX_LOGIT_BIAS, "additionalProperties": False,
                       "patternProperties": {"^[0-9]{1,9}$": {"type": "number", "minimum": -BIAS_RANGE,
                                                              "maximum": BIAS_RANGE}},
                       "description": "token id (a string) -> bias added to its logit"},
        "min_tokens": {"type": "integer", "minimum": 0, "maximum": INT32_MAX,
                       "description": "end-of-sequence held off until then; at most max_tokens"},
        "stop_token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                           "maxItems": MAX_STOP_TOKEN_IDS},
    } | _structured()


# Any JSON schema is taken; the spec lists `type` only, as no OpenAPI schema can describe the valid ones.
_SCHEMA = {"type": "object", "additionalProperties": False,
           "properties": {"type": {"enum": ["object", "array", "string", "integer", "number", "boolean", "null"]}},
           "description": "the JSON schema the output must satisfy (draft 2020-12, any keyword but not, "
                          "if/then/else, contains, uniqueItems, propertyNames and the dependent ones)"}
_ONE_GUIDE = "; at most one of response_format (other than text) and the guided_* fields"


def _structured() -> dict[str, Any]:
    """Structured outputs (serving/structured.py). Where a string is a regex or a grammar, the `pattern` only
    bounds the examples this spec promises to accept; any regex or grammar xgrammar parses is taken, and one
    it does not is a 400 naming the field."""
    json_schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "schema": _SCHEMA,
        "strict": {"type": "boolean", "description": "the schema is always enforced, strict or not"}}}
    formats = [
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "json_schema"],
         "properties": {"type": {"enum": ["json_schema"]}, "json_schema": json_schema}},
    ]
    literal = {"type": "string", "minLength": 1, "maxLength": MAX_GUIDE_CHARS, "pattern": "^[A-Za-z0-9 ]+$"}
    return {
        "response_format": {"oneOf": formats, "description": "text (free), json_object (any JSON object) or "
                            "json_schema: the output is constrained to it" + _ONE_GUIDE},
        "guided_json": _SCHEMA | {"description": "vLLM's: a JSON schema (object or JSON text) the output must "
                                            "satisfy" + _ONE_GUIDE},
        "guided_regex": literal | {"description": "vLLM's: a regular expression the whole output must match "
                                   "(any xgrammar parses; the pattern is only what this spec promises)"
                                   + _ONE_GUIDE},
        "guided_choice": {"type": "array", "minItems": 1, "maxItems": MAX_GUIDED_CHOICES,
                          "items": {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]+$"},
                          "description": "vLLM's: the output is exactly one of these strings" + _ONE_GUIDE},
        "guided_grammar": {"type": "string", "minLength": 1, "maxLength": MAX_GUIDE_CHARS,
                           "pattern": '^root ::= "[a-z]+"$',
                           "description": "vLLM's: an EBNF grammar in xgrammar's dialect (GBNF, as llama.cpp's; "
                                          "the start rule is root) the output must match (any xgrammar parses; "
                                          "the pattern is only what this spec promises)" + _ONE_GUIDE},
    }


def _one_guide() -> dict[str, Any]:
    """No two guides in one body (a stricter rule than the door's, which lets response_format text pass)."""
    names = ["response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar"]
    pairs = [{"required": [a, b]} for i, a in enumerate(names) for b in names[i + 1:]]
    return {"not": {"anyOf": pairs}}


def _ignored(endpoint: str) -> dict[str, Any]:
    """The fields accepted and dropped (openai_params); any other field not described is a 400."""
    return {p.name: {"description": f"accepted and ignored: {p.why}"}
            for p in params_of(endpoint).values() if p.support is Support.IGNORED}


def _chat_request(model: ServedModel) -> dict[str, Any]:
    text = {"type": "string", "maxLength": model.max_prompt_chars}
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["text"]}, "text": text}}
    # Tool-call history (an assistant message with tool_calls and content null, then role "tool" messages with
    # the tool_call_id they answer) is accepted too; the rule that each result answers an earlier call is
    # beyond a schema, so the spec lists only plain messages.
    message = {
        "type": "object", "required": ["role", "content"],
        "description": "also: {role: assistant, content: null, tool_calls: [...]} and {role: tool, "
                       "tool_call_id, content} answering it",
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "developer"]},
            "content": {"oneOf": [text, {"type": "array", "items": part}]},
        },
    }
    name = {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"}
    function = {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {"type": "object", "required": ["name"], "properties": {
            "name": name, "description": {"type": "string", "maxLength": 1000},
            "parameters": {"type": "object", "description": "a JSON schema of the arguments",
                           "properties": {"type": {"type": "string", "enum": ["object"]}},
                           "additionalProperties": False},
        }, "additionalProperties": False},
    }, "additionalProperties": False}
    props = {
        "model": {"type": "string", "enum": [model.name]},
        "messages": {"type": "array", "items": message, "minItems": 1},
        "max_completion_tokens": _sampling(model)["max_tokens"],
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
        # one function here: names must be unique, which a schema cannot say; a named or "required" choice is
        # described in words (it needs tools, and constrains the answer as response_format would)
        "tools": {"type": "array", "items": function, "minItems": 1, "maxItems": 1,
                  "description": "functions the model may call (up to 128, unique names)"},
        "tool_choice": {"type": "string", "enum": ["none"],
                        "description": "none | auto | required | {type: function, function: {name}}; "
                                       "all but none need tools"},
        "parallel_tool_calls": {"type": "boolean"},
    }
    # OpenAI's rule, as protocol checks it: top_logprobs above 0 needs logprobs: true
    needs_logprobs = [{"required": ["logprobs"], "properties": {"logprobs": {"enum": [True]}}},
                      {"properties": {"top_logprobs": {"enum": [0]}}}]
    return {"type": "object", "required": ["model", "messages"], "additionalProperties": False,
            "properties": _sampling(model) | props | _ignored(CHAT), "anyOf": needs_logprobs,
            "allOf": [_one_guide()]}


def _completion_request(model: ServedModel, vocab_size: int) -> dict[str, Any]:
    token_ids = {"type": "array", "minItems": 1, "maxItems": model.max_context - 1,
                 "items": {"type": "integer", "minimum": 0, "maximum": vocab_size - 1}}
    props = {
        "model": {"type": "string", "enum": [model.name]},
        "prompt": {"oneOf": [{"type": "string", "minLength": 1, "maxLength": model.max_prompt_chars}, token_ids]},
        "echo": {"type": "boolean"},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS},
    }
    # the prompt's logprobs are not computed: echo and logprobs above 0 do not go together
    echo_or_logprobs = [{"properties": {"echo": {"enum": [False]}}}, {"properties": {"logprobs": {"enum": [0]}}},
                        {"not": {"required": ["echo"]}}, {"not": {"required": ["logprobs"]}}]
    return {"type": "object", "required": ["model", "prompt"], "additionalProperties": False,
            "properties": _sampling(model) | props | _ignored(COMPLETIONS), "anyOf": echo_or_logprobs,
            "allOf": [_one_guide()]}


def _responses(ok: str, content: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": ok, "content": content}}
    for status, why in ERROR_STATUSES.items():
        out[status] = {"description": why, "content": {_JSON: {"schema": _ref("Error")}}}
    return out


def _post(summary: str, request: str) -> dict[str, Any]:
    ok = {_JSON: {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}
    return {"post": {
        "summary": summary, "operationId": request,
        "requestBody": {"required": True, "content": {_JSON: {"schema": _ref(request)}}},
        "responses": _responses("The completion, or an SSE stream of chunks when stream is true", ok),
    }}


def _get(summary: str, op: str, content_type: str = _JSON, open_: bool = False) -> dict[str, Any]:
    schema = {"type": "string"} if content_type.startswith("text/") else {"type": "object"}
    get: dict[str, Any] = {"summary": summary, "operationId": op,
                           "responses": _responses("OK", {content_type: {"schema": schema}})}
    if open_:
        get["security"] = []  # readable without a key
    return {"get": get}


def _error_schema() -> dict[str, Any]:
    """OpenAI's error object (responses.error_body)."""
    inner = {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "what was wrong and how to fix it"},
        "type": {"type": "string", "enum": ["invalid_request_error", "requests", "server_error"],
                 "description": "invalid_request_error for a 4xx, requests for a 429, server_error for a 5xx"},
        "param": {"type": "string", "nullable": True, "description": "the request field at fault, if one is"},
        "code": {"type": "string", "description": "e.g. model_not_found, invalid_value, unsupported_parameter, "
                                                  "unknown_parameter, invalid_api_key, rate_limit_exceeded"}}}
    return {"type": "object", "required": ["error"], "properties": {"error": inner}}


def _embeddings_request(embedders: list[tuple[str, int]]) -> dict[str, Any]:
    """embedders: (name, longest input in tokens) of each embedding model."""
    longest = max((n for _, n in embedders), default=512)
    text = {"type": "string", "minLength": 1}
    ids = {"type": "array", "minItems": 1, "maxItems": longest, "items": {"type": "integer", "minimum": 0}}
    model: dict[str, Any] = {"type": "string"}
    if embedders:
        model["enum"] = [name for name, _ in embedders]
    props = {
        "model": model,
        "input": {"oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS},
                            ids, {"type": "array", "items": ids, "minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}]},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    }
    return {"type": "object", "required": ["model", "input"], "properties": props}


def _with_path_params(op: dict[str, Any], *names: str) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]
    return {method: body | {"parameters": params} for method, body in op.items()}


def _v2_infer(op: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"post": {
        "summary": "KServe v2 inference: JSON tensors, or a JSON header then binary tensors "
                   "(Inference-Header-Content-Length)", "operationId": op,
        "requestBody": {"required": True, "content": {_JSON: {"schema": {"type": "object"}},
                                                      "application/octet-stream": binary}},
        "responses": _responses("The outputs", {_JSON: {"schema": {"type": "object"}},
                                                "application/octet-stream": binary}),
    }}


def _v2_paths() -> dict[str, Any]:
    """The KServe v2 / Open Inference Protocol routes (kserve_http), per model and per model version."""
    paths = {
        "/v2": _get("Server metadata (KServe v2)", "v2ServerMetadata"),
        "/v2/health/live": _get("The process answers (KServe v2)", "v2Live"),
        "/v2/health/ready": _get("Every model can serve (KServe v2; 503 otherwise)", "v2Ready"),
    }
    for base, suffix, names in (("/v2/models/{name}", "", ("name",)),
                                ("/v2/models/{name}/versions/{version}", "Version", ("name", "version"))):
        paths[base] = _with_path_params(_get("Model metadata (KServe v2)", f"v2ModelMetadata{suffix}"), *names)
        paths[f"{base}/ready"] = _with_path_params(_get("Model ready (KServe v2)", f"v2ModelReady{suffix}"),
                                                   *names)
        paths[f"{base}/infer"] = _with_path_params(_v2_infer(f"v2Infer{suffix}"), *names)
    return paths


def openapi_spec(model: ServedModel | None, vocab_size: int = 0,
                 embedders: list[tuple[str, int]] = ()) -> dict[str, Any]:
    """The spec for this server's models: limits of the completion endpoints come from its (first) LLM, those
    of /v1/embeddings from its embedding models, given as (name, longest input in tokens)."""
    paths = {}
    schemas: dict[str, Any] = {"EmbeddingsRequest": _embeddings_request(list(embedders)), "Error": _error_schema()}
    if model is not None:
        paths["/v1/chat/completions"] = _post("Chat completion (OpenAI)", "ChatCompletionRequest")
        paths["/v1/completions"] = _post("Text completion (OpenAI)", "CompletionRequest")
        schemas["ChatCompletionRequest"] = _chat_request(model)
        schemas["CompletionRequest"] = _completion_request(model, vocab_size)
    paths |= {
        "/v1/embeddings": _post("Embeddings (OpenAI)", "EmbeddingsRequest"),
        "/v1/models": _get("The served models", "listModels"),
        "/v1/genie/workers": _get("Each worker's step traffic and KV use", "workerStats"),
        "/v1/genie/plans": _get("Each model's plan: predicted beside measured costs", "listPlans"),
        "/health/live": _get("The process answers", "live"),
        "/health/ready": _get("Every model can serve (503 with reasons otherwise)", "ready"),
        "/health": _get("Each model and replica: ready, degraded, restarting or down", "health"),
        "/metrics": _get("Prometheus metrics", "metrics", "text/plain"),
        "/openapi.json": _get("This document", "openapi", open_=True),
    } | _v2_paths() | program_paths()
    return {
        "openapi": "3.0.3",
        "info": {"title": "genie-serve", "version": "1", "description":
                 "OpenAI-compatible inference. With API keys set, send 'Authorization: Bearer KEY'; health and "
                 "metrics need one only when serving.protect_metrics is on."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
