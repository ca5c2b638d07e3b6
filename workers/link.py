"""The door of the worker link: every call must carry an accepted link token, and its request must parse.

One grpc.aio interceptor sits in front of every RPC the server hosts, so an RPC added later cannot forget the
check. The presented token never reaches a log line or a status message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from genie.auth import LINK_METADATA_KEY, LINK_TOKEN_ENV, KeySet

log = logging.getLogger("genie.worker")

LOG_EVERY = 1000  # refused calls between two log lines, so a flood of them cannot flood the log
MISSING = (
    f"this worker needs a link credential: send gRPC metadata '{LINK_METADATA_KEY}: Bearer TOKEN' with the "
    f"token it was started with ({LINK_TOKEN_ENV} or --token-file)"
)
WRONG = (
    f"the link credential was not accepted; send the token this worker was started with ({LINK_TOKEN_ENV} "
    "or --token-file)"
)


class LinkGuard(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted `authorization: Bearer TOKEN` (UNAUTHENTICATED) and undecodable
    requests (INVALID_ARGUMENT, where gRPC itself would answer UNKNOWN). An empty KeySet accepts any caller:
    that is `genie-worker --insecure-no-auth`."""

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys
        self.refused = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        header = _metadata_value(details.invocation_metadata, LINK_METADATA_KEY)
        if not self._keys.accepts_header(header):
            handler = await continuation(details)  # only to answer in the method's own shape
            streaming = handler is not None and handler.stream_stream is not None
            return self._refuse(details.method, MISSING if header is None else WRONG, streaming)
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown methods get UNIMPLEMENTED from gRPC
        if handler.stream_stream is not None:  # StepStream: its one check is this one, at the stream's start
            return _parse_stream_inside(handler, details.method)
        return _parse_inside(handler, details.method)

    def _refuse(self, method: str, message: str, streaming: bool = False) -> grpc.RpcMethodHandler:
        if self.refused % LOG_EVERY == 0:
            log.warning("refused a call to %r without an accepted link credential (%d so far)", method[:100],
                        self.refused + 1)
        self.refused += 1

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            # Read the caller's first message, so its write has landed before the status goes out: a stream
            # closed under a write in flight reaches the caller as INTERNAL instead of UNAUTHENTICATED.
            async for _ in requests:
                break
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if streaming:
            return grpc.stream_stream_rpc_method_handler(refuse_stream)
        return grpc.unary_unary_rpc_method_handler(refuse)


def _metadata_value(metadata: Any, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


def _parse_inside(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler, decoding its request itself so bad bytes become INVALID_ARGUMENT."""
    parse, behavior = handler.request_deserializer, handler.unary_unary
    rpc = method.rsplit("/", 1)[-1]

    async def run(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await _parsed(parse, raw, context, rpc), context)

    return grpc.unary_unary_rpc_method_handler(run, response_serializer=handler.response_serializer)


def _parse_stream_inside(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same streaming handler, decoding each message itself: bad bytes end the stream INVALID_ARGUMENT."""
    parse, behavior = handler.request_deserializer, handler.stream_stream
    rpc = method.rsplit("/", 1)[-1]

    async def run(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def requests() -> AsyncIterator[Any]:
            async for raw in raws:
                yield await _parsed(parse, raw, context, rpc)

        return await behavior(requests(), context)

    return grpc.stream_stream_rpc_method_handler(run, response_serializer=handler.response_serializer)


async def _parsed(parse: Callable[[bytes], Any] | None, raw: bytes, context: grpc.aio.ServicerContext,
                  rpc: str) -> Any:
    try:
        return parse(raw) if parse is not None else raw
    except Exception:  # DecodeError, and whatever else bad bytes can make a parser raise
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the {rpc} request is not a valid protobuf message of genie/protos/worker.proto",
        )
