"""What is due written while a round is still curating (C2): one write at a time, a bounded number a round.

A burst keeps every SKU dirty, so a round curates for hundreds of milliseconds; a stock-out found in its first slice
must not wait for the last, nor a change whose throttle interval ended meanwhile. The desk starts a write of what is
due (stock-outs first) between two slices and goes on curating while Redis runs it: awaiting each such write held the
round for its whole round trip, and the ordinary changes the round had curated waited for the sum of them
(``benchmarks/publish.py``'s ordinary change delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection

from atp_service.storage.channel_store import StreamLost
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.tasks import cancel_and_wait
from reservation import Feed

log = logging.getLogger(__name__)


def due_now(feeds: Collection[Feed], now_ms: int) -> tuple[bool, bool]:
    """(something of ``feeds`` may be taken now, a stock-out waits): what ``UrgentWrites.between_slices`` is told."""
    due = any(at is not None and at <= now_ms for at in (feed.next_wakeup(now_ms) for feed in feeds))
    return due, any(feed.stockouts_pending for feed in feeds)


class UrgentWrites:
    """The desk's writes between slices. ``write`` is one ``publish_due(once=True)``: it settles a failed write itself
    (fence, then read what landed) before it raises."""

    __slots__ = ("_failed", "_left", "_task", "_write")

    def __init__(self, write: Callable[[bool], Awaitable[object]]) -> None:
        """``write(stockouts_only)``: True once the round's budget is spent (C2: stock-outs are never held by it)."""
        self._write = write
        self._left = 0
        self._failed = False
        self._task: asyncio.Future[object] | None = None

    def begin_round(self, budget: int) -> None:
        """A new round may start ``budget`` writes (``PUBLISH_WRITES_PER_ROUND``)."""
        assert self._task is None, "a round's urgent write is waited for before the round ends"
        self._left, self._failed = budget, False

    def between_slices(self, due: bool, stockouts: bool = False) -> None:
        """Start a write of what is due, unless one is still on its way (the feeds take one write at a
        time), or one failed this round (settled: the round's own publishing retries, so a round waits on a failing
        Redis at most once here). Once the round's budget is spent, a write of the ``stockouts`` waiting only: they
        went out only after the round's last slice (p99 370 ms under a burst), while a write of them is a few tens of
        updates at most, and a round's other writes are what the budget bounds."""
        task = self._task
        if task is not None:
            if not task.done():
                return
            self._task = None
            self._note(task)
        if self._failed:
            return
        if self._left > 0 and due:
            self._left -= 1
            self._task = asyncio.ensure_future(self._write(False))
        elif stockouts:
            self._task = asyncio.ensure_future(self._write(True))

    async def finish(self) -> None:
        """Wait for the write on its way, if any: the round's own publishing takes from the feeds next."""
        task = self._task
        if task is not None:
            await asyncio.wait((task,))  # the desk stopped meanwhile: the write is still ours, and ``stop`` ends it
            self._task = None
            self._note(task)

    async def stop(self) -> None:
        task, self._task = self._task, None
        try:
            with contextlib.suppress(*STORAGE_ERRORS):  # settled as far as it got; the desk is going
                await cancel_and_wait(task)
        except StreamLost as exc:  # its settle found the loss before the round was told: no bug of the stop
            log.error("channel desk stopping: %s; the next start links its versions to what Redis holds", exc,
                      extra={"event": "channel_loss_found_stopping", "error": str(exc)})

    def _note(self, task: asyncio.Future[object]) -> None:
        error = None if task.cancelled() else task.exception()
        if isinstance(error, STORAGE_ERRORS):
            self._failed = True  # the round's other writes are its own publishing's, after the last slice
        elif error is not None:
            raise error  # a bug: the desk's loop ends and the service sees it
