"""The calls gRPC holds for this service and how far each has come, so that a graceful stop ends as soon
as everything that can finish has finished, whoever has stopped reading.

gRPC writes a reply (a stream's message, a call's answer, its final status) only as far as HTTP/2 flow
control lets it. A stop ends each open stream with a status queued behind the replies its caller has not
read; a caller that stopped reading never takes it, and grpc.aio has no way to end one call: the stop
waited out its whole grace (``shutdown_grace_s``) for that one caller, then gRPC cancelled it.

So every call is booked here (``enter``), from its handler's start until its handler's task has ended —
gRPC ends it once the call's status is written — and until the work it started elsewhere (a
``ReserveStream``'s batches being decided: ``hold``) has ended. Meanwhile the service is either working on
it, or waiting for gRPC to write what it handed over (``Call.writing``: a message, an answer, a status). A
call is *stalled* when it waits on a write that has not completed for ``shutdown_stall_s``, with nothing of
its own being worked on. ``settle`` waits (within the grace) until every call has ended or stalled, then
refuses the calls that begin after it (UNAVAILABLE ``SHUTTING_DOWN``, before they do anything); the stop
then has gRPC cut what is left. Nothing that changes state is cut half-way (R8): a call being worked on is
never stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from atp_service.edge.drain import SHUTTING_DOWN, Drain
from atp_service.instruments import Counter
from reservation import Reason, Unavailable

log = logging.getLogger(__name__)
_current: ContextVar[Call | None] = ContextVar("atp_call", default=None)


class Call:
    """One call in the book. ``with call.writing():`` around a write handed to gRPC (a stream's ``yield``)."""

    __slots__ = ("_book", "_handler", "held", "method", "writing_since")

    def __init__(self, book: CallBook, method: str, handler: asyncio.Task[Any] | None) -> None:
        self._book, self.method, self._handler = book, method, handler
        self.writing_since: float | None = None
        """When the write gRPC is doing for it began (monotonic); None: the service is working on it."""
        self.held = 0
        """Tasks of its own still running: its handler's, and the work it started elsewhere (``hold``)."""

    def writing(self) -> Call:
        return self

    def __enter__(self) -> None:
        self.write_begun()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.writing_since = None

    def write_begun(self) -> None:
        """What is left of the call is gRPC's write of what it was handed (an answer, a status)."""
        if self.writing_since is None:
            self.writing_since = time.monotonic()
            if self._book.settling:  # ``moved``, written out: every call's, and nothing waits but a stop
                self._book.moved()

    def hold(self, task: asyncio.Future[Any]) -> None:
        """``task`` is this call's work (R8: it runs to its end): the call is not stalled, nor ended, before it is."""
        self.held += 1
        task.add_done_callback(self._ended)

    def stalled_since(self) -> float | None:
        """When its write began, if that write is all that is left of it (the handler waiting on gRPC alone)."""
        handler_running = self._handler is not None and not self._handler.done()
        return self.writing_since if handler_running and self.held == 1 else None

    def _ended(self, _task: asyncio.Future[Any]) -> None:
        self.held -= 1
        if self._handler is not None and self._handler.done():
            self.writing_since = None  # its write ended with its task, written or cut
        book = self._book
        if not self.held:
            book._calls.discard(self)  # ``left``, written out
        if book.settling:  # ``moved``, written out
            book.moved()


@dataclass(frozen=True)
class Settled:
    """What ``settle`` left: calls still worked on when the grace ran out, and calls stalled, by method."""

    working: Tally[str]
    stalled: Tally[str]


class CallBook:
    """The calls in progress (``enter``), stalled after ``stall_s`` waiting on one write; ``cut``:
    ``atp_streams_cut_at_stop_total{method}``, the stalled calls a stop had gRPC cut."""

    def __init__(self, stall_s: float, cut: Counter | None = None) -> None:
        self.stall_s = stall_s
        self._cut = cut
        self._calls: set[Call] = set()
        self.closed = False
        """Set once ``settle`` has returned: a call begun from then on is refused before it does anything."""
        self._moved = asyncio.Event()
        self.settling = False
        """A stop's ``settle`` waits for calls to move (end, or begin a write): only then is each move told."""

    def enter(self, method: str) -> Call:
        """Book the call whose handler runs in this task (``Unavailable`` once closed); ``current()`` is it."""
        if self.closed:
            raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
        task = asyncio.current_task()
        call = Call(self, method, task)
        self._calls.add(call)
        _current.set(call)
        if task is not None:
            call.hold(task)
        return call

    def left(self, call: Call) -> None:
        self._calls.discard(call)

    def moved(self) -> None:
        self._moved.set()

    async def settle(self, timeout_s: float) -> Settled:
        """Wait until every call has ended or stalled, at most ``timeout_s``; then close the book."""
        deadline = time.monotonic() + timeout_s
        self.settling = True  # set before the first tally: a move after it is told, none is missed
        while True:
            self._moved.clear()
            now = time.monotonic()
            working, stalled, due = self._tally(now)
            if not working or now >= deadline:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), min(due, deadline) - now)
        self.closed = True
        if stalled:
            for method, n in stalled.items():
                if self._cut is not None:
                    self._cut.labels(method).inc(n)
            log.warning("shutdown: %d calls cut: their callers stopped reading (%s); no write of theirs "
                        "completed for %gs", sum(stalled.values()), ", ".join(sorted(stalled)), self.stall_s,
                        extra={"event": "stop_cut_stalled", "calls": sum(stalled.values()),
                               "methods": dict(stalled), "stall_s": self.stall_s})
        return Settled(working, stalled)

    def _tally(self, now: float) -> tuple[Tally[str], Tally[str], float]:
        """Calls being worked on, calls stalled (by method), and when the next one waiting on a write stalls."""
        working, stalled, due = Tally[str](), Tally[str](), float("inf")
        for call in self._calls:
            since = call.stalled_since()
            if since is not None and now - since >= self.stall_s:
                stalled[call.method] += 1
                continue
            working[call.method] += 1
            if since is not None:
                due = min(due, since + self.stall_s)
        return working, stalled, due


def current() -> Call | None:
    """The call whose handler (or work it started: tasks copy their context) runs now; None outside one."""
    return _current.get()


async def stop_calls(drain: Drain, calls: CallBook, grace_s: float) -> Settled:
    """A stop's drain: new calls refused, streams ended (``drain.py``), then every call ended or stalled,
    within ``grace_s``; what is left (stalled, or still running past the grace) is for gRPC to cut."""
    drain.shut()
    settled = await calls.settle(grace_s)
    if settled.working:
        log.warning("shutdown: %d calls still in progress after the %.1fs grace period; gRPC cancels them",
                    sum(settled.working.values()), grace_s)
    return settled
