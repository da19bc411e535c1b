"""Streams whose callers stop reading: ended after ``stream_stall_s`` without a reply written.

gRPC writes a stream's reply only as far as HTTP/2 flow control lets it: a caller that stops
reading (a hung consumer, a paused process, a debugger) leaves the reply being written for ever.
The stream then kept its place (among ``max_reserve_streams`` or ``max_watchers``), its decided
batches and the replies gRPC had buffered, until the connection died, and a few such callers
filled the service's streams for everyone. So every reply of a server stream is written under a
limit: one not written within ``stream_stall_s`` ends the stream with a status naming the limit
(queued behind the replies the caller has not read: it reads them first), counted in
``atp_streams_stalled_total{method}``, and the call's task is cancelled, which frees its place as
a cancelled call's is freed. A ``ReserveStream``'s batches are decided to their end all the same
(R8): the stream ends ``OUTCOME_UNKNOWN``, and a retry with the same ids answers what was decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any

import grpc

from atp_service.edge.calls import current
from atp_service.edge.errors import abort
from atp_service.edge.ratelog import RateLimitedLog
from atp_service.instruments import Counter
from atp_service.tasks import keep
from reservation import DomainError, Reason, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
END_WAIT_S = 5.0
"""How long the stalled call's status may take to be queued before its task is cancelled anyway."""
LIMIT = "stream_stall_s"
OPEN_LIMIT = "max_open_service_streams"


class StallLimit:
    """Ends a server stream whose reply has not been written within ``limit_s`` (0: never)."""

    def __init__(self, limit_s: float, stalled: Counter) -> None:
        self.limit_s = limit_s
        self._stalled = stalled
        self._ending: set[asyncio.Task[None]] = set()
        # Any caller can cause these lines, so they are rate-limited: by this service's own limit, else a
        # flood at another service in the process (an embedder's, a test's) silenced its first ones.
        self._lines = RateLimitedLog(log, logging.WARNING)

    def writing(self, method: str, context: Context) -> AbstractContextManager[None]:
        """Around one reply's write: the stream is ended should it not be written within the limit.
        In a generator handler, around its ``yield``: gRPC resumes the generator only once the reply
        is written (in the call's own task), and closing it at the ``yield`` leaves the timer too."""
        task = asyncio.current_task()
        if not self.limit_s or task is None:
            return nullcontext()
        timer = _Timer()
        timer.handle = asyncio.get_running_loop().call_later(self.limit_s, self._stall, method, context, task, timer)
        return timer

    def context(self, method: str, context: Context) -> Context:
        """``context`` with its ``write`` under the limit: for a handler that writes its replies
        itself (the health service's ``Watch``)."""
        return _LimitedContext(self, method, context)  # type: ignore[return-value]

    def _stall(self, method: str, context: Context, task: asyncio.Task[Any], timer: _Timer) -> None:
        keep(self._ending, self._end(method, context, task, timer))

    async def _end(self, method: str, context: Context, task: asyncio.Task[Any], timer: _Timer) -> None:
        """The status first (sent after the replies already written: cancelling alone left the
        caller waiting for a status for ever), then the call's task cancelled: its reply is given
        up and its ``finally`` blocks free its place. Not if the write ended meanwhile (in the loop
        turn the timer fired in): the stream goes on."""
        if timer.over:
            return
        self._stalled.labels(method).inc()
        self._lines.log("stream ended: its caller stopped reading", event="stream_stalled", rpc=method,
                        peer=context.peer(), limit_s=self.limit_s)
        error = stalled_error(method, self.limit_s)
        try:
            # grpc.aio's abort raises once the status is queued (AbortError); a call that ended
            # meanwhile refuses it: either way the task is cancelled next.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(abort(context, error), END_WAIT_S)
        finally:
            task.cancel()


def stalled_error(method: str, limit_s: float) -> DomainError:
    """What a stalled stream is ended with, naming the limit (metadata ``limit``)."""
    waited = f"a reply waited {limit_s:g}s to be written: the caller stopped reading (limit {LIMIT}={limit_s:g})"
    if method == "ReserveStream":  # its batches were decided (R8): in doubt to the caller, not lost
        return Unavailable(f"{waited}; the batches sent and not answered may have been decided: re-send them "
                           "with the same reservation ids, which answers what was decided", Reason.OUTCOME_UNKNOWN,
                           metadata={"limit": LIMIT})
    return ResourceExhausted(f"{waited}; read the stream's replies as they come, then call again",
                             Reason.CAPACITY_REACHED, metadata={"limit": LIMIT})


class _LimitedContext:
    """A servicer context whose ``write`` is under a ``StallLimit``; everything else is the call's."""

    __slots__ = ("_context", "_limit", "_method")

    def __init__(self, limit: StallLimit, method: str, context: Context) -> None:
        self._limit, self._method, self._context = limit, method, context

    async def write(self, reply: Any) -> None:
        with self._limit.writing(self._method, self._context), _writing():
            await self._context.write(reply)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _writing() -> AbstractContextManager[None]:
    """The booked call (``calls.py``) waiting on this write meanwhile."""
    call = current()
    return nullcontext() if call is None else call.writing()


class _Timer:
    """Cancels its stall timer once the write it was armed for is over, however it ends (``over``)."""

    __slots__ = ("handle", "over")

    def __init__(self) -> None:
        self.handle: asyncio.TimerHandle | None = None
        self.over = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.over = True
        if self.handle is not None:
            self.handle.cancel()


class OpenStreams:
    """Streams of the open services (``grpc.health.v1.Health/Watch``, reflection: no token needed,
    auth on or off) open at once, at most ``limit``: each holds a task and its buffers for as long
    as its caller likes (a watch reads only on a change, so the stall limit never ends it), and
    nothing else bounded them. Refused ``CAPACITY_REACHED``, counted in ``refusals`` by the limit."""

    def __init__(self, limit: int, refusals: Counter) -> None:
        self.limit, self.open = limit, 0
        self._refused = refusals.labels(OPEN_LIMIT)

    def bounded(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        """``behaviour`` (a generator or a coroutine, as gRPC calls it) counted while it runs."""
        if inspect.isasyncgenfunction(behaviour):
            async def replies(request: Any, context: Context) -> AsyncIterator[Any]:
                await self._enter(context)
                try:
                    async with contextlib.aclosing(behaviour(request, context)) as inner:
                        async for reply in inner:
                            yield reply
                finally:
                    self.open -= 1

            return replies

        async def answer(request: Any, context: Context) -> Any:
            await self._enter(context)
            try:
                return await behaviour(request, context)
            finally:
                self.open -= 1

        return answer

    async def _enter(self, context: Context) -> None:
        if self.open >= self.limit:
            self._refused.inc()
            await abort(context, ResourceExhausted(
                f"{OPEN_LIMIT}: {self.limit} health watch and reflection streams are open already; "
                "close one, or use Health/Check", Reason.CAPACITY_REACHED, metadata={"limit": OPEN_LIMIT}))
        self.open += 1
