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
import sys
import time
from asyncio import get_running_loop
from collections import Counter as Tally
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from atp_service.edge.drain import SHUTTING_DOWN, Drain
from atp_service.instruments import Counter
from reservation import Reason, Unavailable

log = logging.getLogger(__name__)
_current: ContextVar[Call | None] = ContextVar("atp_call", default=None)
Work = asyncio.Future[Any]
"""A call's handler's task, or work it started elsewhere (``hold``)."""

_task_of: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]
if sys.version_info >= (3, 12):
    _task_of = asyncio.current_task  # C from 3.12
else:  # ``asyncio.current_task`` is Python in 3.11 (a frame per call): the dict it reads, read as it does
    _task_of = getattr(asyncio.tasks, "_current_tasks").get  # noqa: B009  # private: no stub names it


class Call:
    """One call in the book. ``with call.writing():`` around a write handed to gRPC (a stream's ``yield``)."""

    __slots__ = ("_book", "_handler", "method", "writing_since")

    def __init__(self, book: CallBook, method: str, handler: asyncio.Task[Any] | None) -> None:
        self._book = book
        self.method = method
        self._handler = handler
        self.writing_since: float | None = None
        """When the write gRPC is doing for it began (monotonic); None: the service is working on it."""

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
            if self._book.settling:  # nothing waits for a move but a stop's ``settle``
                self._book.moved()

    def hold(self, task: Work) -> None:
        """``task`` is this call's work (R8: it runs to its end): the call is not stalled, nor ended, before it is."""
        self._book.book(task, self)

    def stalled_since(self, running: int) -> float | None:
        """When its write began, if that write is all that is left of it (the handler waiting on gRPC alone):
        ``running``, how many of its tasks (its handler's, those it holds) have not ended."""
        handler = self._handler
        return self.writing_since if running == 1 and handler is not None and not handler.done() else None


@dataclass(frozen=True)
class Settled:
    """What ``settle`` left: calls still worked on when the grace ran out, and calls stalled, by method."""

    working: Tally[str]
    stalled: Tally[str]


class CallBook:
    """The calls in progress (``enter``), stalled after ``stall_s`` waiting on one write; ``cut``:
    ``atp_streams_cut_at_stop_total{method}``, the stalled calls a stop had gRPC cut.

    A call is in the book while any of its tasks runs: ``_tasks`` holds each task (its handler's, the
    work it holds) until the task's end takes it out — ``dict.pop`` as the task's done callback, a C
    call with no frame of its own on every call's path. Only a stop's ``settle`` waits for those ends:
    it asks to be told of them (``_ended``) from the moment it begins, not every call all the time."""

    def __init__(self, stall_s: float, cut: Counter | None = None) -> None:
        self.stall_s = stall_s
        self._cut = cut
        self._tasks: dict[Work, Call] = {}
        self._left: Callable[[Work], object] = self._tasks.pop
        """A task's done callback: the task out of the book."""
        self.closed = False
        """Set once ``settle`` has returned: a call begun from then on is refused before it does anything."""
        self._moved = asyncio.Event()
        self.settling = False
        """A stop's ``settle`` waits for calls to move (end, or begin a write): only then is each move told."""

    def enter(self, method: str) -> Call:
        """Book the call whose handler runs in this task (``Unavailable`` once closed); ``current()`` is it."""
        if self.closed:
            raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
        task = _task_of(get_running_loop())  # ``asyncio.current_task()``, written out (see ``_task_of``)
        call = Call(self, method, task)
        _current.set(call)
        if task is not None:  # ``book``, written out: every call's
            tasks = self._tasks
            if task not in tasks:
                task.add_done_callback(self._left)
                if self.settling:
                    task.add_done_callback(self._ended)
            tasks[task] = call
        return call

    def book(self, task: Work, call: Call) -> None:
        """``call`` is in the book until ``task`` has ended (and its other tasks have)."""
        tasks = self._tasks
        if task not in tasks:  # once per task: a second call in one task takes the first one's place
            task.add_done_callback(self._left)
            if self.settling:
                task.add_done_callback(self._ended)
        tasks[task] = call

    def moved(self) -> None:
        self._moved.set()

    def _ended(self, _task: Work) -> None:
        self._moved.set()

    async def settle(self, timeout_s: float) -> Settled:
        """Wait until every call has ended or stalled, at most ``timeout_s``; then close the book."""
        deadline = time.monotonic() + timeout_s
        self.settling = True  # set before the first tally: a move after it is told, none is missed
        for task in self._tasks:  # the tasks booked before: their ends told too (after their ``_left``)
            task.add_done_callback(self._ended)
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
        running = Tally[Call]()  # per call, its tasks not ended (an ended one's ``_left`` may be still to run)
        for task, call in self._tasks.items():
            if not task.done():
                running[call] += 1
        working, stalled, due = Tally[str](), Tally[str](), float("inf")
        for call, tasks in running.items():
            since = call.stalled_since(tasks)
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
