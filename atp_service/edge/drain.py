"""Graceful stop in two steps: the service stops taking work and finishes what it took, then gRPC stops.

Left to gRPC alone, a stop depends on its HTTP/2 transport: the classic one lets calls in progress
finish within the grace period, the promise-based one (``ATP_HTTP2_TRANSPORT=promise``) fails them
at once with INTERNAL — an order that cannot tell whether its reservation was made. And an open
stream (``ReserveStream``, a channel's ``WatchAvailability``) never ends by itself, so every stop
waited out the whole grace period and then cut it off mid-answer.

So the servicer passes every call through a ``Drain``: once it closes, new calls are answered
UNAVAILABLE at once (retryable: another instance, or this one restarted), streams stop reading,
answer what they had taken and end UNAVAILABLE, and the stop waits only for that before gRPC's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any, TypeVar

from atp_service.tasks import cancel_and_wait, cancel_for_good, exception_seen, keep
from reservation import Reason, Unavailable

T = TypeVar("T")
SHUTTING_DOWN = "service is shutting down; retry (another instance, or this one once restarted)"


class Drain:
    """Counts the calls in progress; ``close`` refuses new ones and waits for these."""

    def __init__(self) -> None:
        self.closing = False
        self.active = 0
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()

    @property
    def shut_event(self) -> asyncio.Event:
        """Set once ``shut``: a wait of a stream's that a stop must not outlast ends with it."""
        return self._closed

    def enter(self) -> None:
        """A call begins (raises Unavailable once closing); pair with ``leave``."""
        if self.closing:
            raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        assert self.active >= 0, "leave without enter"
        if self.closing:
            self.left()

    def left(self) -> None:
        """A call has left (``active`` lowered already) while closing: the last one ends ``close``'s wait."""
        if not self.active:
            self._idle.set()

    def shut(self) -> None:
        """Refuse new calls and end streams (``close`` waits for the calls in progress too)."""
        self.closing = True
        self._closed.set()

    async def close(self, timeout_s: float) -> bool:
        """Refuse new calls, end streams, and wait up to ``timeout_s`` for the calls in progress.
        True when none is left."""
        self.shut()
        if not self.active:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self.active

    @contextlib.asynccontextmanager
    async def streaming(self, items: AsyncIterable[T]) -> AsyncIterator[AsyncIterator[T]]:
        """``until_closed(items)``, a call in progress until the block ends, which closes it (and ``items``) at once:
        a handler's generator left at its ``yield`` (its caller gone) is closed by gRPC, not the ones it reads."""
        self.enter()
        try:
            async with contextlib.aclosing(self.until_closed(items)) as stream:
                yield stream
        finally:
            self.leave()

    async def until_closed(self, items: AsyncIterable[T]) -> AsyncGenerator[T, None]:
        """``items`` until they end or the drain closes (a read waiting then is given up)."""
        iterator = aiter(items)
        closed = asyncio.ensure_future(self._closed.wait())
        step: asyncio.Future[T] | None = None
        try:
            while not self.closing:
                step = asyncio.ensure_future(anext(iterator))
                await asyncio.wait((step, closed), return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    # Cancelled until it has ended: a watch's read is a redis-py XREAD, which can
                    # lose one cancellation (Python 3.11) and would then read on while the stop
                    # waited out its whole grace period for this stream.
                    with contextlib.suppress(StopAsyncIteration):
                        await cancel_and_wait(step)
                    return
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            closed.cancel()
            if step is not None:  # its end heard even when it came in the turn the reader was cancelled
                step.add_done_callback(exception_seen)
            if step is not None and not step.done():  # the reader cancelled (its caller gone): the read given up
                cancel_for_good(step)  # one lost cancellation would leave it reading Redis for nobody
                if inspect.isasyncgen(iterator):
                    # A lost cancellation may instead end the read with an item (redis-py's XREAD answered in the
                    # turn it was cancelled, Python 3.11): the generator is then left at its next ``yield``,
                    # its ``finally`` (a ``max_watchers`` place) never run. Closed once the read has ended.
                    step.add_done_callback(functools.partial(_close_later, iterator))
            elif inspect.isasyncgen(iterator):  # suspended at its yield: its ``finally`` (a place given back) now,
                await iterator.aclose()  # not whenever the garbage collector finds it


_closing: set[asyncio.Task[None]] = set()


def _close_later(gen: AsyncGenerator[Any, Any], _read: asyncio.Future[Any]) -> None:
    """Close ``gen`` in a task of its own (a done callback cannot await); ended already: nothing to do."""
    async def close() -> None:
        await gen.aclose()

    keep(_closing, close())
