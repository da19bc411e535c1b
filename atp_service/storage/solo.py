"""An entry's way into the log, and the group commit of one entry on one Redis: the log's common
case at moderate rates (``LogStore`` builds on it).

While the log is not busy (below ``commit_delay_min_rate``, 500 entries/s by default) nearly every
group commit carries one entry, sent in the loop turn after its shard sealed it (``submit``,
``_flush``). The general path (``LogStore._flush_batches``) cuts a batch, splits it into units,
packs each unit and answers each from its call's reply through lists of lists: for one entry each of
those steps is a frame, a list or a test paid for nothing (the commit was a fifth of the
interpreter's work for a unary Reserve). Here the entry is packed, sent and answered directly — by
the same packer, through the same ``Nodes.begin`` (or the same task where a commit cannot begin: no
idle connection, replicas to wait for), and answered as ``LogStore._answer`` answers a unit of one:
a script's refusal, a Redis error or a fence (``_refused``) ends it as it would there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

from redis.exceptions import RedisError

from atp_service.instruments import HistogramChild
from atp_service.metrics import StorageMetrics
from atp_service.storage.append_resp import AppendPacker
from atp_service.storage.nodes import Call, Nodes, Script
from atp_service.storage.records import UNCLAIMED, Pending, abandoned_write, unreadable_reply
from atp_service.storage.window import CommitWindow

log = logging.getLogger(__name__)


class CommitState:
    """What ``LogStore``'s commits share (set by ``LogStore``): declared once for its two ways of committing,
    ``SoloCommit`` here and ``batches.BatchCommit``."""

    nodes: Nodes
    metrics: StorageMetrics
    epochs: dict[int, str]
    _tokens: dict[int, int]
    _window: CommitWindow
    _loop: asyncio.AbstractEventLoop | None
    _timer: asyncio.TimerHandle | None
    _max_in_flight: int
    _APPEND: Script
    _packer: AppendPacker
    _pending: list[Pending]
    _first_pending_at: float
    _in_flight: int
    _scheduled: bool
    _tasks: set[asyncio.Task[None]]


class SoloCommit(CommitState):
    """``LogStore``'s entries submitted (``submit``), its group commits (``_flush``: of one entry here,
    of more by ``LogStore._flush_batches``) and a one-entry commit's answer (``_replied_one``)."""

    _sizes: list[int]
    """``metrics.pipeline_size.sizes``: a commit of ``n`` entries counted as ``_sizes[n] += 1``."""
    _append_seconds: HistogramChild
    """``metrics.append_seconds``' one series (the family has no labels)."""
    leased: bool
    tracer: Any

    def submit(self, shard: int, seq: int, data: bytes, then: Callable[[], None] | None = None) -> asyncio.Future[None]:
        """Queue one entry for the next group commit; the future fails with RedisError/OSError when
        the entry is not certainly durable, and ``then`` is called as soon as it is settled (not when
        cancelled). Entries go out in submission order; cancelling the future before it is sent keeps
        the entry out of the log. ``_arrival``, ``_running_loop``, ``CommitWindow.arrived`` and ``_kick``
        written out: every entry's."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._running_loop()
        now = loop.time()
        window = self._window
        window.arrivals += 1
        if now >= window.measure_at:
            window.measure(now)
        pending = self._pending
        if not pending:
            self._first_pending_at = now
        fut = loop.create_future()
        pending.append(Pending(shard, seq, data, self.epochs.get(shard, UNCLAIMED), self._tokens.get(shard, 0), 0, fut,
                               then))
        if self._scheduled or self._in_flight >= self._max_in_flight:
            self._kick(loop)  # a commit to join, or one in flight to wait for
        elif window.busy:
            self._schedule(loop)  # it may wait for company
        else:  # ``_schedule`` of a quiet log, written out: sent in the next turn
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        return fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Group commit (``loop``: the one it was scheduled on, running it now): an entry waiting alone
        on one Redis goes as a commit of its own, sent here (the common case); anything else goes the
        general way (``LogStore._flush_batches``): several entries waiting, the commits in flight
        already as many as may be, a Redis Cluster, a leased log (a group lost refuses its own
        entries), a span to trace."""
        self._scheduled = False
        self._timer = None
        pending = self._pending  # the same list throughout (changed in place)
        if len(pending) != 1 or self._in_flight >= self._max_in_flight or self.leased or self.tracer is not None \
                or self.nodes.cluster:
            return self._flush_batches(loop)
        p = pending.pop()  # (``_first_pending_at``: none waits now; the next entry's ``submit`` sets it)
        if p.done.done():
            return  # cancelled before it was sent: it never is (``_flush_batches`` drops it so)
        self._in_flight += 1
        self._sizes[1] += 1  # ``pipeline_size.observe(1)`` without its frame (``SizeHistogram.sizes``)
        try:
            keys, packed = self._packer.pack_one(p)
        except Exception as exc:  # an entry that cannot be packed: nothing was sent
            self._unpackable([p], exc)
            self._sent(None)  # the commit is over: the log goes on with the next
            return
        calls = [Call(self._APPEND, keys, [], packed)]
        try:
            begun = self.nodes.begin(calls, partial(self._replied_one, p, perf_counter()))
        except Exception:  # nothing was sent: the task answers the entry with whatever it meets
            begun = False
        if not begun:  # as ``_flush_batches``: a task sends it (no idle connection, replicas to wait for)
            task = loop.create_task(self._send(calls, [[p]]), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(partial(self._commit_ended, [[p]]))

    def _commit_ended(self, units: list[list[Pending]], task: asyncio.Task[None]) -> None:
        """A group commit's task is over (``_sent``). Cancelled — before it ran (the loop shutting down: it sent
        nothing, answered nothing) or at an await of its round trip — its entries not answered yet are answered
        in doubt (R7): else their shards waited for ever behind a commit that never ended (liveness)."""
        if task.cancelled():
            error = abandoned_write()
            for unit in units:
                for p in unit:
                    p.settle(error)  # (one answered already is not again)
        self._sent(task)

    def _replied_one(self, p: Pending, started: float, replies: list[Any]) -> None:
        """``_replied`` of a begun commit of ``p`` alone: its future settled from the one call's reply
        (``_answer``'s unit of one), then the commit is over (``_sent``). ``append_seconds.observe``
        written out (the round trip is never NaN)."""
        try:
            took, seconds = perf_counter() - started, self._append_seconds
            seconds.sum += took
            seconds.counts[bisect_left(seconds.bounds, took)] += 1
            (reply,) = replies  # ValueError where the counts differ, as zip(strict=True)
            if isinstance(reply, BaseException):
                p.settle(self._refused(reply, p.shard, p.epoch))
                return
            (result,) = reply
            if result.startswith(b"!"):  # the script refused it: not landed (R7)
                p.settle(RedisError(result[1:].decode(errors="replace")))
                return
            done = p.done  # landed: ``Pending.settle(None)``, written out
            if not done.done():
                done.set_result(None)
                then = p.then
                if then is not None:
                    try:
                        then()
                    except Exception:  # as the loop does with a callback's
                        log.exception("a log entry's completion failed")
        except Exception as exc:  # a reply no append returns: whether it landed is unknown (R7), never a wedge
            p.settle(unreadable_reply(exc))
        finally:
            self._in_flight -= 1  # ``_sent``, written out
            if self._pending and not self._scheduled:
                self._schedule(self._running_loop())

    # -- of ``LogStore`` (``_unpackable`` is ``CommitSlots``': declared only, a stub here would come first) ---
    _unpackable: Callable[[list[Pending], Exception], None]
    _flush_batches: Callable[[asyncio.AbstractEventLoop], None]

    def _refused(self, exc: BaseException, group: int | None = None, epoch: str | None = None) -> BaseException:
        raise NotImplementedError

    async def _send(self, calls: list[Call], units: list[list[Pending]]) -> None:
        raise NotImplementedError

    def _sent(self, task: asyncio.Task[None] | None) -> None:
        raise NotImplementedError

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError
