"""Every top-level field of OpenAI's Chat Completions and (legacy) Completions request bodies, and what
genie-serve does with it: honoured, ignored (pure bookkeeping, listed in the README), or refused with a 400
that names it. `check_fields` runs before parsing, so no field is ever dropped silently.

The OpenAI fields are those of the `openai` Python client's `completion_create_params` (3.57): chat has 37,
completions 18. A few vLLM extensions are listed too. A field in neither list is refused as OpenAI itself
refuses it ("Unrecognized request argument supplied"), with code `unknown_parameter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from genie.errors import InvalidRequest

CHAT = "chat"
COMPLETIONS = "completions"
BOTH = frozenset({CHAT, COMPLETIONS})
PATHS = {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions"}


class Support(StrEnum):
    HONOURED = "honoured"  # protocol.py reads it and the output follows it
    IGNORED = "ignored"  # accepted and dropped: it cannot change the output (README, "Errors")
    REFUSED = "refused"  # 400 unsupported_parameter, unless null or one of `neutral`


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    support: Support
    endpoints: frozenset[str] = BOTH
    why: str = ""  # ignored: why dropping it is safe; refused: what the client is told
    neutral: tuple[Any, ...] = ()  # refused: values that ask for nothing beyond the default, accepted


def _honoured(name: str, endpoints: frozenset[str] = BOTH) -> Param:
    return Param(name, Support.HONOURED, endpoints)


def _ignored(name: str, why: str, endpoints: frozenset[str] = frozenset({CHAT})) -> Param:
    return Param(name, Support.IGNORED, endpoints, why)


def _refused(name: str, why: str, neutral: tuple[Any, ...] = (),
             endpoints: frozenset[str] = frozenset({CHAT})) -> Param:
    return Param(name, Support.REFUSED, endpoints, why, neutral)


_CHAT_ONLY = frozenset({CHAT})
_COMPLETIONS_ONLY = frozenset({COMPLETIONS})
_FUNCTIONS = "OpenAI's deprecated function calling; send tools and tool_choice"
_CACHE = "a hint for OpenAI's prompt cache; it cannot change the output"

PARAMS: tuple[Param, ...] = (
    # What protocol.py reads today.
    _honoured("model"),
    _honoured("messages", _CHAT_ONLY),
    _honoured("prompt", _COMPLETIONS_ONLY),
    _honoured("max_tokens"),
    _honoured("max_completion_tokens", _CHAT_ONLY),
    _honoured("temperature"),
    _honoured("top_p"),
    _honoured("seed"),
    _honoured("stop"),
    _honoured("stream"),
    _honoured("stream_options"),
    _honoured("logprobs"),  # chat: a boolean; completions: how many top tokens
    _honoured("top_logprobs", _CHAT_ONLY),
    _honoured("echo", _COMPLETIONS_ONLY),
    _honoured("top_k"),  # vLLM
    _honoured("ignore_eos"),  # vLLM
    # best_of other than 1 and a non-empty suffix get protocol.py's own 400 naming them (no ranking of
    # candidates, no fill-in-the-middle): the parser reads them, so they are listed here.
    _honoured("n"),
    _honoured("frequency_penalty"),
    _honoured("presence_penalty"),
    _honoured("logit_bias"),
    _honoured("best_of", _COMPLETIONS_ONLY),
    _honoured("suffix", _COMPLETIONS_ONLY),
    _honoured("min_tokens"),  # vLLM
    _honoured("repetition_penalty"),  # vLLM
    _honoured("stop_token_ids"),  # vLLM
    # Structured outputs (serving/structured.py): one guide per request, enforced by constrained decoding.
    # response_format is chat's in OpenAI; vLLM takes it on completions too, and so do we.
    _honoured("response_format"),
    # Tool calling (serving/tools.py): rendered with the chat template, parsed into tool_calls; "required" and
    # a named function are enforced with a guide built from the functions' schemas.
    _honoured("tools", _CHAT_ONLY),
    _honoured("tool_choice", _CHAT_ONLY),
    _honoured("parallel_tool_calls", _CHAT_ONLY),
    *(_honoured(name) for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")),  # vLLM
    # Bookkeeping for OpenAI's own platform: none of it changes what is generated.
    _ignored("user", "an end-user id for OpenAI's abuse monitoring", BOTH),
    _ignored("safety_identifier", "the successor of `user`, for OpenAI's abuse monitoring"),
    _ignored("store", "asks OpenAI to keep the completion for its dashboard; nothing is kept here"),
    _ignored("metadata", "tags for stored completions on OpenAI's dashboard"),
    _ignored("service_tier", "OpenAI's billing and latency tier; there is one tier here"),
    _ignored("prompt_cache_key", _CACHE),
    _ignored("prompt_cache_retention", _CACHE),
    _ignored("prompt_cache_options", _CACHE),
    # Features genie-serve does not have; "neutral" values ask for nothing and are accepted.
    _refused("functions", _FUNCTIONS, ([],)),
    _refused("function_call", _FUNCTIONS, ("none",)),
    _refused("modalities", "only text output is supported", (["text"],)),
    _refused("audio", "audio output is not supported"),
    _refused("prediction", "predicted outputs are not supported"),
    _refused("reasoning_effort", "the served models do not reason", ("none",)),
    _refused("verbosity", "there is no verbosity control"),
    _refused("web_search_options", "there is no web search here"),
    _refused("moderation", "there is no moderation model here"),
    # vLLM extensions that change the output and are not implemented.
    *(_refused(name, "this vLLM extension is not supported", endpoints=BOTH) for name in (
        "min_p", "use_beam_search", "bad_words", "allowed_token_ids")),
)

_BY_ENDPOINT: dict[str, dict[str, Param]] = {
    endpoint: {p.name: p for p in PARAMS if endpoint in p.endpoints} for endpoint in (CHAT, COMPLETIONS)
}


def params_of(endpoint: str) -> dict[str, Param]:
    """The table for one endpoint ("chat" or "completions"), by field name."""
    return _BY_ENDPOINT[endpoint]


def check_fields(body: dict[str, Any], endpoint: str) -> None:
    """Raises InvalidRequest(param=field) for the first field of `body` that is refused or unknown."""
    table = params_of(endpoint)
    for name, value in body.items():
        param = table.get(name)
        if param is None:
            raise _unknown(name, endpoint)
        if param.support is Support.REFUSED and value is not None and value not in param.neutral:
            raise _refusal(param)


def _unknown(name: str, endpoint: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name[:80]!r} is not a parameter of {PATHS[endpoint]} (unrecognized request argument); "
        "GET /openapi.json lists the ones this server takes",
        param=name, code="unknown_parameter",
    )


def _refusal(param: Param) -> InvalidRequest:
    allowed = " or ".join(repr(v) for v in param.neutral)
    fix = f"leave it out or send {allowed}" if allowed else "leave it out"
    return InvalidRequest(f"'{param.name}' is not supported by this server: {param.why}; {fix}",
                          param=param.name, code="unsupported_parameter")
