"""OpenAI-compatible request parsing: JSON bodies in, validated dataclasses out.

Every problem raises `InvalidRequest` naming the field and what is expected, so the HTTP layer can answer
400 with OpenAI's error shape. Nothing here knows about aiohttp or tokenizers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from genie.errors import InvalidRequest

from .choices import MAX_CHOICES
from .openai_params import check_fields
from .quoting import show
from .structured import Guide, check_guide, parse_guide
from .tools import Message, ToolRequest, check_history, guide_for, parse_message, parse_tools

MAX_STOP_SEQUENCES = 4
MAX_LOGPROBS = 20
INT32_MAX = 2**31 - 1  # top_k and max_tokens travel to the workers as int32
PENALTY_RANGE = 2.0  # OpenAI's frequency/presence penalties lie in [-2, 2]
MAX_REPETITION_PENALTY = 2.0  # (0, 2]; 1 disables (vLLM's repetition_penalty)
BIAS_RANGE = 100.0  # OpenAI's logit_bias values lie in [-100, 100]
MAX_LOGIT_BIAS = 300  # entries one request may bias
MAX_STOP_TOKEN_IDS = 64
# n > 1 runs in the router (serving/choices.py) and the HTTP door gives each choice its index; the gRPC
# messages carry no index yet, so that door refuses n > 1 (grpc_server.params_from_pb sends none).
DOORS_TAKE_N = True
# logits / temperature overflows float32 below about 1e-37 and the worker's sampling fails; a temperature
# this close to 0 samples the argmax anyway, so it is served as greedy (vLLM's _SAMPLING_EPS is the same).
GREEDY_BELOW = 1e-5



@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int | None  # None: the server's default, capped by the context left
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    ignore_eos: bool
    logprobs: int  # 0: none
    include_usage: bool = False  # stream_options.include_usage: a final chunk with usage when streaming
    frequency_penalty: float = 0.0  # [-2, 2]
    presence_penalty: float = 0.0  # [-2, 2]
    repetition_penalty: float = 1.0  # (0, 2]; 1 disables
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]), sorted by id
    min_tokens: int = 0  # EOS and stop_token_ids cannot end the text before this many tokens
    stop_token_ids: tuple[int, ...] = ()  # more tokens that end the text (finish_reason "stop")
    n: int = 1  # choices (serving/choices.py)
    # structured outputs (serving/structured.py): the output must match this guide; "" leaves it free
    guide_kind: str = ""  # json, json_schema, regex, choice, grammar (SamplingParams.guide_kind)
    guide_spec: str = ""  # the schema as JSON text, the regex, a JSON list of choices, or the grammar


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage | Message, ...]
    params: GenerationParams
    tools: ToolRequest | None = None  # the functions the model may call (serving/tools.py)


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]
    params: GenerationParams
    echo: bool


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_text(value: str, where: str) -> str:
    """Refuses strings that are not valid Unicode text, such as a lone surrogate ("\\ud800") from JSON."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"'{where}' holds {show(value[exc.start:exc.end])} at character {exc.start}, which is not valid "
            "Unicode text (a lone surrogate); send UTF-8 text"
        ) from None
    return value


def _get(body: dict, key: str, kinds: type | tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise InvalidRequest(f"'{key}' must be {what}, got {_type_name(value)} {show(value)}")
    if not isinstance(value, kinds):
        raise InvalidRequest(f"'{key}' must be {what}, got {_type_name(value)} {show(value)}")
    return value


def _int_in(body: dict, key: str, default: Any, low: int, high: int) -> Any:
    value = _get(body, key, int, default, "an integer")
    if value is not None and not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be between {low} and {high}, got {show(value)}")
    return value


def _number(body: dict, key: str, default: float) -> float:
    given = _get(body, key, (int, float), default, "a number")
    try:
        value = float(given)
    except OverflowError:  # an integer literal too large for a float (10**400)
        value = math.inf
    if not math.isfinite(value):
        raise InvalidRequest(f"'{key}' must be a finite number, got {show(given)}")
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or a list of strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stop)}")
    if any(s == "" for s in stop):
        raise InvalidRequest("'stop' sequences must not be empty strings")
    return tuple(check_text(s, "stop") for s in stop)


def _logprobs(body: dict, chat: bool) -> int:
    if chat:
        # top_logprobs is checked even without logprobs: a value is either valid or refused, never ignored.
        top = _int_in(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        if not _get(body, "logprobs", bool, False, "a boolean"):
            if top:
                raise InvalidRequest(f"'top_logprobs' needs 'logprobs': true (OpenAI's rule), got top_logprobs={top}")
            return 0
        return max(1, top)
    return _int_in(body, "logprobs", 0, 0, MAX_LOGPROBS)


def _penalty(body: dict, key: str) -> float:
    value = _number(body, key, 0.0)
    if not -PENALTY_RANGE <= value <= PENALTY_RANGE:
        raise InvalidRequest(f"'{key}' must be between -2 and 2, got {value}")
    return value


def _repetition_penalty(body: dict) -> float:
    value = _number(body, "repetition_penalty", 1.0)
    if not 0.0 < value <= MAX_REPETITION_PENALTY:
        raise InvalidRequest(
            f"'repetition_penalty' must be in (0, {MAX_REPETITION_PENALTY:g}] (1 disables it), got {value}"
        )
    return value


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token id (a string of digits in JSON) to a bias in [-100, 100]."""
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise InvalidRequest(f"'logit_bias' must be an object of token id -> bias, got {_type_name(bias)}")
    if len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"'logit_bias' takes at most {MAX_LOGIT_BIAS} tokens, got {len(bias)}")
    out = {}
    for key, value in bias.items():
        token = str(key)
        if not token.isascii() or not token.isdigit():
            raise InvalidRequest(f"'logit_bias' keys must be token ids such as \"15339\", got {show(key)}")
        number = _number({"logit_bias": value}, "logit_bias", 0.0)
        if not -BIAS_RANGE <= number <= BIAS_RANGE:
            raise InvalidRequest(f"'logit_bias' values must be between -100 and 100, got {show(value)} for {token}")
        out[int(token)] = number
    return tuple(sorted(out.items()))


def _stop_token_ids(body: dict) -> tuple[int, ...]:
    ids = body.get("stop_token_ids")
    if ids is None:
        return ()
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise InvalidRequest(f"'stop_token_ids' must be a list of token ids (integers >= 0), got {show(ids)}")
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest(f"'stop_token_ids' takes at most {MAX_STOP_TOKEN_IDS} ids, got {len(ids)}")
    return tuple(sorted(set(ids)))


def parse_params(body: dict, chat: bool) -> GenerationParams:
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _get(body, key, int, None, "a positive integer")
    if max_tokens is not None and max_tokens <= 0:
        raise InvalidRequest(f"'{key}' must be > 0, got {max_tokens}")
    if max_tokens is not None and max_tokens > INT32_MAX:
        raise InvalidRequest(f"'{key}' must be at most the model's context, got {show(max_tokens)}")
    temperature = _number(body, "temperature", 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise InvalidRequest(f"'temperature' must be between 0 and 2, got {temperature}")
    if temperature < GREEDY_BELOW:
        temperature = 0.0
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise InvalidRequest(f"'top_p' must be in (0, 1], got {top_p}")
    top_k = _int_in(body, "top_k", 0, 0, INT32_MAX)
    n = _choices(body)
    seed = _int_in(body, "seed", None, -(2**63), 2**63 - 1)
    guide = parse_guide(body)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=_stop(body),
        stream=_get(body, "stream", bool, False, "a boolean"),
        ignore_eos=_get(body, "ignore_eos", bool, False, "a boolean"),
        logprobs=_logprobs(body, chat),
        include_usage=_include_usage(body),
        frequency_penalty=_penalty(body, "frequency_penalty"),
        presence_penalty=_penalty(body, "presence_penalty"),
        repetition_penalty=_repetition_penalty(body),
        logit_bias=_logit_bias(body),
        min_tokens=_int_in(body, "min_tokens", 0, 0, INT32_MAX),
        stop_token_ids=_stop_token_ids(body),
        n=n,
        guide_kind=guide.kind,
        guide_spec=guide.spec,
    )


def _choices(body: dict) -> int:
    n = _get(body, "n", int, 1, "an integer")
    if n != 1 and not DOORS_TAKE_N:
        raise InvalidRequest(f"'n' must be 1 (one choice per request is supported), got {show(n)}")
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"'n' must be between 1 and {MAX_CHOICES}, got {show(n)}")
    return n


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object such as {\"include_usage\": true}")
    return _get(options, "include_usage", bool, False, "a boolean")


def _model(body: dict, served: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string; GET /v1/models lists the served models")
    if model != served:
        raise InvalidRequest(f"model {show(model)} is not served here; this server serves '{served}'")
    return model


def _content(value: Any, index: int) -> str:
    where = f"messages[{index}].content"
    if isinstance(value, str):
        return check_text(value, where)
    if isinstance(value, list):  # OpenAI content parts; only text parts are supported
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"'{where}' parts must be text parts for this model")
            texts.append(part["text"])
        return check_text("".join(texts), where)
    raise InvalidRequest(f"'messages[{index}].content' must be a string, got {_type_name(value)}")


def parse_chat(body: Any, served: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    check_fields(body, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content} objects")
    parsed = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'messages[{i}]' must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise InvalidRequest(f"'messages[{i}].role' must be system, developer, user, assistant or tool, got "
                                 f"{show(role)}", param=f"messages[{i}].role")
        raw = msg.get("content")
        content = None if raw is None else _content(raw, i)  # null: only an assistant's tool calls (tools.py)
        parsed.append(parse_message("system" if role == "developer" else role, content, msg, i))
    check_history(parsed)
    tools = parse_tools(body)
    params = _with_tool_guide(parse_params(body, chat=True), tools)
    return ChatRequest(model=_model(body, served), messages=tuple(parsed), params=params, tools=tools)


def _with_tool_guide(params: GenerationParams, tools: ToolRequest | None) -> GenerationParams:
    """tool_choice "required" or a named function: the answer is constrained to calls that parse against the
    functions' parameter schemas."""
    guide = guide_for(tools)
    if guide is None:
        return params
    if params.guide_kind:
        raise InvalidRequest("tool_choice 'required' or a named function constrains the answer to tool calls, so "
                             "response_format or guided_* cannot constrain it too; send one of them",
                             param="tool_choice")
    check_guide("tools", Guide(*guide))
    return dataclasses.replace(params, guide_kind=guide[0], guide_spec=guide[1])


def parse_completion(body: Any, served: str) -> CompletionRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    check_fields(body, "completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise InvalidRequest("'prompt' must be a string or a non-empty list of token ids (one prompt per request)")
        prompt = tuple(prompt)
    elif not isinstance(prompt, str):
        raise InvalidRequest(f"'prompt' must be a string, got {_type_name(prompt)}")
    if prompt == "":
        raise InvalidRequest("'prompt' must not be empty")
    if isinstance(prompt, str):
        check_text(prompt, "prompt")
    _no_fill_in_middle(body)
    params = parse_params(body, chat=False)
    echo = _get(body, "echo", bool, False, "a boolean")
    if echo and params.logprobs:
        raise InvalidRequest("'echo' with 'logprobs' is not supported: the prompt's logprobs are not computed; "
                             "send one of them")
    return CompletionRequest(model=_model(body, served), prompt=prompt, params=params, echo=echo)


def _no_fill_in_middle(body: dict) -> None:
    """suffix asks for fill-in-the-middle, which the served models are not trained for; best_of for a
    server-side best-of-n search, not built: both are refused unless left at their no-op values."""
    suffix = _get(body, "suffix", str, "", "a string")
    if suffix:
        raise InvalidRequest("'suffix' is not supported: the served model has no fill-in-the-middle; leave it out")
    best_of = _get(body, "best_of", int, 1, "an integer")
    if best_of != 1:
        raise InvalidRequest(f"'best_of' must be 1 (no server-side best-of search), got {show(best_of)}; use n")
