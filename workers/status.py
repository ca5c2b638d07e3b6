"""The worker's one map from exceptions to gRPC statuses: a unary call's status, or a stream step's in-band error.

Status messages speak only of the call that failed; an unexpected exception's text goes to the worker's log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import torch

from genie.errors import GenieError

log = logging.getLogger("genie.worker")


def status_of(exc: Exception, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The one place exceptions become gRPC statuses (a unary call's, or a stream step's in-band error)."""
    if isinstance(exc, GenieError):
        return grpc.StatusCode[exc.grpc_code], str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        log.warning("%s ran out of device memory", rpc)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"{rpc}: the worker's device ran out of memory; send smaller batches or give the fragment a smaller "
            "kv_cache_bytes"
        )
    # The text of an unexpected exception may hold any state (other sequences' ids, tensors): it goes to the
    # worker's log only.
    log.error("%s failed", rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, (
        f"{rpc} failed inside the worker ({type(exc).__name__}); the worker's log has the traceback"
    )


def map_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Unary handlers end with the status of what they raised; the worker keeps serving after any of them."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort(*status_of(exc, handler.__name__))

    return wrapper
