"""The Step stream: one long-lived bidirectional gRPC call per worker link carries every step.

A unary call per step pays for a new HTTP/2 stream, its headers and the link check each time; the stream pays
once. Each request carries an id and its answer the same id, so several steps may be in flight. A step that
fails is answered in-band with the status the unary Step would have ended with, and the caller raises the
same typed error. When the stream breaks (worker gone, link refused, channel closed), every step in flight on
it fails as a failed unary call would (Unavailable for a lost worker), and the next step opens a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from genie.errors import GenieError, Unavailable
from genie.protos import worker_pb2 as pb

log = logging.getLogger("genie.worker")

ErrorFromStatus = Callable[[grpc.StatusCode, "str | None", str, str], GenieError]


async def answer_stream(
    requests: AsyncIterator[pb.StepStreamRequest],
    context: grpc.aio.ServicerContext,
    answer: Callable[[pb.StepStreamRequest], Awaitable[pb.StepStreamResponse]],
) -> None:
    """Worker side: runs `answer` on each request as it arrives and writes each answer when it is ready (one
    write at a time); returns once the caller has half-closed and every answer is written."""
    lock = asyncio.Lock()
    pending: set[asyncio.Task[None]] = set()
    in_flight: set[int] = set()  # step ids being answered: an answer names its step by id alone

    async def one(message: pb.StepStreamRequest) -> None:
        if message.id in in_flight:  # refused unrun: its answer could not be told from the first one's
            response = pb.StepStreamResponse(id=message.id, error=pb.StepError(
                code="INVALID_ARGUMENT", message=f"step id {message.id} is already in flight on this stream; "
                                                 "each step in flight needs an id of its own"))
        else:
            in_flight.add(message.id)
            try:
                response = await answer(message)
            finally:
                in_flight.discard(message.id)
        async with lock:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError):
                await context.write(response)  # a caller that went away reads nothing more

    try:
        async for message in requests:
            task = asyncio.create_task(one(message))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    finally:
        for task in pending:
            task.cancel()


class StepStream:
    """Client side: one open StepStream call and the steps in flight on it. Use it from one event loop.

    `broken` is set once the call has ended; the owner then opens a new StepStream for later steps."""

    def __init__(self, stub: Any, metadata: Any, address: str, error_from_status: ErrorFromStatus) -> None:
        self.address = address
        self._error_from_status = error_from_status
        self._call = stub.StepStream(metadata=metadata)
        self._pending: dict[int, asyncio.Future[pb.StepStreamResponse]] = {}
        self._next_id = 0
        self._write_lock = asyncio.Lock()
        self.broken: GenieError | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def step(self, request: pb.StepRequest, timeout: float | None) -> pb.StepResponse:
        """Sends one step and waits for its answer; raises the step's typed error, or Unavailable when the
        stream breaks or no answer comes within `timeout` s (as DEADLINE_EXCEEDED does for a unary call)."""
        if self.broken is not None:
            raise self.broken
        step_id = self._next_id
        self._next_id += 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending[step_id] = future
        written = False
        try:
            # One deadline for the write and the answer: a write to a worker that is gone may never complete
            # (the call waits for a connection that is refused), and a step must not outwait its timeout.
            async with asyncio.timeout_at(None if timeout is None else loop.time() + timeout):
                async with self._write_lock:
                    await self._call.write(pb.StepStreamRequest(id=step_id, step=request))
                written = True
                answer = await future
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            raise await self._ended() from None  # the write found the call over: the reader knows why
        except TimeoutError:
            error = Unavailable(f"worker at {self.address} did not answer Step within {timeout} s "
                                "(DEADLINE_EXCEEDED on its step stream)")
            if not written:  # a write cut off halfway leaves the stream unusable: the next step opens another
                self.broken = self.broken or error
                self._call.cancel()
            raise error from None
        finally:
            del self._pending[step_id]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: what it holds was raised above, or nobody waits for it now
        if answer.HasField("error"):
            code = getattr(grpc.StatusCode, answer.error.code, grpc.StatusCode.UNKNOWN)
            raise self._error_from_status(code, answer.error.message, self.address, "Step")
        return answer.step

    async def close(self) -> None:
        """Ends the call; steps still in flight fail with Unavailable."""
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _ended(self) -> GenieError:
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        assert self.broken is not None
        return self.broken

    async def _read(self) -> None:
        error: GenieError
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    error = Unavailable(f"worker at {self.address} ended the Step stream")
                    break
                future = self._pending.get(message.id)
                if future is not None and not future.done():
                    future.set_result(message)
        except grpc.aio.AioRpcError as exc:
            # A refused credential keeps its type; any other end of the call is a broken link (a worker killed
            # under a write in flight can surface as INTERNAL), so the router migrates as for a lost worker.
            code = exc.code() if exc.code() == grpc.StatusCode.UNAUTHENTICATED else grpc.StatusCode.UNAVAILABLE
            details = exc.details() if code != grpc.StatusCode.UNAVAILABLE else (
                f"the step stream ended with {exc.code().name}: {exc.details()}")
            error = self._error_from_status(code, details, self.address, "Step")
        except asyncio.CancelledError:
            error = Unavailable(f"the Step stream to worker {self.address} was closed")
        except Exception as exc:  # anything else ends this stream, never the caller's loop
            log.warning("the Step stream to worker %s failed: %s", self.address, exc)
            error = Unavailable(f"the Step stream to worker {self.address} failed ({type(exc).__name__})")
        self.broken = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
