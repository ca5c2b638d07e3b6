"""The gRPC front door (grpc.aio): `genie.inference.Inference` over the same router as the HTTP door.

Protobuf stays here: requests become `GenerationParams` / `GenerationRequest` through the HTTP door's own
validation (`protocol.parse_params`, `build_generation`), so both doors accept exactly the same values.
Exceptions become gRPC statuses in one decorator, `map_errors`; API keys and message size and form are
checked for every hosted service by `grpc_guard.FrontDoorInterceptor`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from genie.auth import KeySet
from genie.errors import ConfigError, GenieError, InvalidRequest, NotFound, Unavailable
from genie.protos import inference_pb2 as pb
from genie.protos import inference_pb2_grpc
from genie.workers.contract import SeqResult

from .catalog import LLMEntry
from .generation import build_generation, check_token_ids, encode_messages, encode_prompt
from .grpc_guard import FrontDoorInterceptor, grpc_receive_limit
from .http import HttpState
from .protocol import GenerationParams, parse_chat, parse_params
from .router import Delta, GenerationRequest, Submission

log = logging.getLogger("genie.serve")

SERVER_OPTIONS = [("grpc.so_reuseport", 0)]  # a second server on a taken port must fail, not share it
_FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
_PROMPT_FIELDS = ("prompt", "messages", "prompt_token_ids")

Handler = Callable[..., Awaitable[Any]]


def map_errors(handler: Handler) -> Handler:
    """The one place exceptions become statuses: GenieError by its grpc_code, anything else INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # the status is already set
        except GenieError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
        except Exception:
            log.exception("unexpected error in gRPC %s", handler.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal server error in {handler.__name__}; the server log has the details"
            )

    return wrapper


def params_from_pb(req: pb.GenerateRequest) -> GenerationParams:
    """Sampling fields under their OpenAI names, checked by the HTTP door's rules; unset optionals stay None."""
    fields = {
        "max_tokens": req.max_tokens if req.HasField("max_tokens") else None,
        "temperature": req.temperature if req.HasField("temperature") else None,
        "top_p": req.top_p if req.HasField("top_p") else None,
        "top_k": req.top_k,
        "seed": req.seed if req.HasField("seed") else None,
        "stop": list(req.stop) or None,
        "ignore_eos": req.ignore_eos,
        "logprobs": req.logprobs,
        "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
        "repetition_penalty": req.repetition_penalty if req.HasField("repetition_penalty") else None,
        "logit_bias": {str(token): bias for token, bias in req.logit_bias.items()} or None,
        "min_tokens": req.min_tokens,
        "stop_token_ids": list(req.stop_token_ids) or None,
    }
    return parse_params(fields, chat=False)


def llm_for(req: pb.GenerateRequest, state: HttpState) -> LLMEntry:
    """The LLM a request names; no model given: the server's first LLM."""
    catalog = state.catalog
    if not req.model:
        if not catalog.llms:
            raise InvalidRequest("this server serves no generative model; see ListModels")
        return catalog.llms[0]
    if req.model not in catalog.entries:
        served = ", ".join(f"'{n}'" for n in catalog.names())
        raise NotFound(f"model {req.model[:80]!r} is not served here; this server serves {served} (see ListModels)")
    return catalog.llm({"model": req.model})


async def prompt_ids_from_pb(req: pb.GenerateRequest, state: HttpState, llm: LLMEntry | None = None) -> list[int]:
    """The prompt as token ids; text is bounded by the context and tokenized off the event loop."""
    llm = llm or llm_for(req, state)
    tokenizer, served, model = llm.tokenizer, llm.name, llm.model
    present = {
        "prompt": req.HasField("prompt"),
        "messages": len(req.messages) > 0,
        "prompt_token_ids": len(req.prompt_token_ids) > 0,
    }
    given = [name for name in _PROMPT_FIELDS if present[name]]
    if len(given) != 1:
        found = f"this request has {' and '.join(given)}" if given else "this request has none"
        raise InvalidRequest(f"give exactly one of 'prompt', 'messages' or 'prompt_token_ids'; {found}")
    if given == ["prompt"]:
        if not req.prompt:
            raise InvalidRequest("'prompt' must not be empty")
        return await encode_prompt(tokenizer, model, req.prompt)
    if given == ["messages"]:
        # parse_chat holds the role rules of the HTTP door; only its messages are used here.
        body = {"model": served, "messages": [{"role": m.role, "content": m.content} for m in req.messages]}
        return await encode_messages(tokenizer, model, parse_chat(body, served).messages)
    return check_token_ids(tokenizer, list(req.prompt_token_ids))


async def generation_from_pb(req: pb.GenerateRequest, state: HttpState,
                             llm: LLMEntry | None = None) -> GenerationRequest:
    llm = llm or llm_for(req, state)
    params = params_from_pb(req)
    return build_generation(llm.model, await prompt_ids_from_pb(req, state, llm), params)


def _logprob_to_pb(result: SeqResult) -> pb.TokenLogprob:
    top = [pb.TopLogprob(token_id=t, logprob=lp) for t, lp in result.top]
    return pb.TokenLogprob(token_id=result.token_id, logprob=result.logprob, top=top)


def response_to_pb(delta: Delta, sub: Submission) -> pb.GenerateResponse:
    """One streamed message; the last (finish_reason set) also carries the usage."""
    msg = pb.GenerateResponse(
        request_id=sub.request_id,
        text=delta.text,
        token_ids=delta.token_ids,
        logprobs=[_logprob_to_pb(r) for r in delta.logprobs],
    )
    if delta.finish_reason is not None:
        msg.finish_reason = _FINISH[delta.finish_reason]
        msg.usage.prompt_tokens = sub.prompt_tokens
        msg.usage.completion_tokens = sub.completion_tokens
    return msg


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, state: HttpState) -> None:
        self.state = state

    @map_errors
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        llm = llm_for(request, self.state)
        router = llm.router
        sub = router.submit(await generation_from_pb(request, self.state, llm))
        try:
            async for delta in sub.deltas():
                if delta.finish_reason is not None and delta.finish_reason not in _FINISH:
                    raise delta.failure or Unavailable(f"generation ended early ({delta.finish_reason}); retry")
                await context.write(response_to_pb(delta, sub))
        finally:
            if not sub.done:  # the client cancelled or the call broke: stop generating and free its KV
                router.abort(sub.request_id)

    @map_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        infos = [pb.ModelInfo(id=e.name, max_context=e.model.max_context, created=e.model.created)
                 for e in self.state.catalog.llms]
        return pb.ListModelsResponse(models=infos)

    @map_errors
    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        services = [e.service for e in self.state.catalog.entries.values()]
        reasons = [r for s in services for r in s.not_ready_reasons()]
        return pb.HealthResponse(live=True, ready=all(s.ready for s in services), reasons=reasons)


AddServices = Callable[[grpc.aio.Server], None]


async def start_grpc_server(
    state: HttpState,
    host: str,
    port: int,
    *,
    keys: KeySet | None = None,
    tls: tuple[bytes, bytes] | None = None,
    services: Sequence[AddServices] = (),
) -> tuple[grpc.aio.Server, int]:
    """Starts serving Inference on host:port (port 0 picks a free one); returns the server and its port.

    keys: API keys every call of every hosted service must carry (default: state.api_keys; empty: none).
    tls: (certificate chain PEM, private key PEM) to serve TLS only (see `tls.tls_pair`); None: plaintext.
    services: more `add_XServicer_to_server`-style callables (the KServe v2 door), behind the same checks.
    Messages are capped at state.max_body_bytes (INVALID_ARGUMENT beyond).
    """
    limit = state.max_body_bytes
    options = [*SERVER_OPTIONS, ("grpc.max_receive_message_length", grpc_receive_limit(limit))]
    interceptor = FrontDoorInterceptor(state.api_keys if keys is None else keys, limit)
    server = grpc.aio.server(options=options, interceptors=[interceptor])
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(state), server)
    for add in services:
        add(server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            cert, key = tls
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(
            f"cannot listen for gRPC on {address}: the port is taken or the host is not an address of this "
            "machine; choose another serving.grpc_port (0 picks a free one) or host"
        )
    await server.start()
    return server, bound


async def stop_grpc_server(server: grpc.aio.Server, grace_s: float = 5.0) -> None:
    """Refuses new calls, lets running streams finish for grace_s seconds, then cancels them.

    A cancelled stream aborts its request in the router, so its KV is freed.
    """
    await server.stop(grace_s)
