"""What every gRPC call passes before a servicer sees it, for every service the server hosts.

`FrontDoorInterceptor` checks the API key (`authorization: Bearer KEY` metadata, constant time, never
logged) and replaces each method's request deserializer so that a message over the size limit, or one that
is not valid protobuf (bad UTF-8 in a string field, a truncated varint), ends as INVALID_ARGUMENT with a
message instead of grpc's INTERNAL "Exception deserializing request!".
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from genie.auth import KeySet

Deserializer = Callable[[bytes], Any]

MISSING_KEY = "this server needs an API key: send the metadata 'authorization: Bearer YOUR_KEY'"
WRONG_KEY = "the API key is not valid for this server; check the 'authorization: Bearer ...' metadata you sent"


@dataclass(frozen=True, slots=True)
class Refused:
    """Stands in for a request message that could not be accepted; the behaviour wrapper aborts with it."""

    message: str


def grpc_receive_limit(max_message_bytes: int) -> int:
    """grpc's own cap, above ours so that our check (INVALID_ARGUMENT) answers first.

    Messages beyond this are refused by grpc itself with RESOURCE_EXHAUSTED before any code here runs;
    the margin keeps that to messages at least 4x the configured limit.
    """
    return max(4 * max_message_bytes, max_message_bytes + (16 << 20))


def lenient(deserialize: Deserializer | None, limit: int) -> Deserializer:
    def parse(raw: bytes) -> Any:
        if len(raw) > limit:
            return Refused(
                f"the request message is {len(raw)} bytes; at most {limit} bytes (serving.max_body_mib) are accepted"
            )
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as exc:  # protobuf raises DecodeError, and others for bad UTF-8 in strings
            return Refused(f"the request message is not valid protobuf for this method: {exc}")

    return parse


async def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for message in requests:
        if isinstance(message, Refused):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message.message)
        yield message


def _guarded(behaviour: Callable[..., Any], request_streaming: bool) -> Callable[..., Any]:
    async def first_check(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request_streaming:
            return _checked(request, context)
        if isinstance(request, Refused):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request

    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for reply in behaviour(await first_check(request, context), context):
                yield reply
        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(await first_check(request, context), context)
    return call


def _denied(message: str) -> Callable[..., Any]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
    return deny


_KINDS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _rebuild(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any], deserialize: Deserializer) -> Any:
    _, make = _KINDS[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, request_deserializer=deserialize, response_serializer=handler.response_serializer)


def _authorization(details: grpc.HandlerCallDetails) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


class FrontDoorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: KeySet, max_message_bytes: int) -> None:
        self.keys = keys
        self.limit = max_message_bytes

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED
        header = _authorization(details)
        if not self.keys.accepts_header(header):
            return _rebuild(handler, _denied(MISSING_KEY if header is None else WRONG_KEY), lambda raw: None)
        name, _ = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behaviour = _guarded(getattr(handler, name), handler.request_streaming)
        return _rebuild(handler, behaviour, lenient(handler.request_deserializer, self.limit))
