"""The log's group commits on a Redis Cluster: a commit slot per shard (``LogStore`` builds on it).

On one Redis a group commit is one script call for the entries of every shard, and one commit is
in flight at a time: a Redis that hangs hangs every shard whatever the log does. On a cluster each
shard's entries are a script call of their own, to the primary serving its group's slot. Were
commits still one at a time there, each answered once every primary had, a primary that hangs
would hold the appends of every shard for its socket timeout (and ``WAIT``'s) — those served by
the primaries that answer too, each time one of its shards sends it a commit (liveness: every
shard answers).

So on a cluster the slot is the shard's: a shard has at most one commit in flight, and a shard
with none sends its entries at once. One at a time per shard keeps its entries landing in seq
order (ids ``<seq>-0``): a later commit landing first is refused (GAP), and its predecessor after
it would be too. The slot is the shard's, not its primary's: a failover or a reshard moves a
shard's group to another primary while a commit of it is in flight, and a slot per primary would
let its next commit go to the new primary beside it. Commits still batch: the shards that have
entries waiting and no commit in flight go together, ``pipeline_max`` entries at most, their calls
pipelined per primary (``Nodes.run_each``); each primary's entries are answered, and their shards'
slots freed, as soon as that primary has answered. A commit that fails answers each of its entries
with the failure as on one Redis: its shard takes its later entries back and settles (R7).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from redis.exceptions import DataError

from atp_service.metrics import StorageMetrics
from atp_service.storage.nodes import Call, Nodes
from atp_service.storage.records import Pending, abandoned_write, unreadable_reply
from atp_service.traces import span


class CommitSlots:
    """``LogStore``'s group commits on a cluster (``_flush_each``), and a batch that cannot be sent."""

    nodes: Nodes
    metrics: StorageMetrics
    tracer: Any
    _pending: list[Pending]
    _pipeline_max: int
    _first_pending_at: float
    _scheduled: bool
    _tasks: set[asyncio.Task[None]]
    _busy: set[int]
    """The shards with a commit in flight (a cluster): their next entries wait in ``_pending``."""

    def _flush_each(self, loop: asyncio.AbstractEventLoop) -> None:
        """``LogStore._flush_batches`` on a cluster: the entries of every shard with no commit in flight go
        now, ``pipeline_max`` a batch (a group whole); those of the others wait, in order."""
        while True:
            batch, self._pending = self._taken()
            if not batch:
                return
            self._first_pending_at = loop.time()  # what stays waits from now on
            self.metrics.pipeline_size.observe(len(batch))
            shards = {p.shard for p in batch}
            self._busy |= shards
            try:
                calls, units = self._calls(batch)
            except Exception as exc:  # an entry that cannot be packed: nothing was sent
                self._unpackable(batch, exc)
                self._freed(shards)
                continue
            left = dict(enumerate(units))  # the units not answered yet, by call: the task's and ``_ended``'s
            task = loop.create_task(self._send_each(calls, left), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(partial(self._ended, left))

    def _taken(self) -> tuple[list[Pending], list[Pending]]:
        """The next batch, and what waits: entries of shards with no commit in flight, oldest first,
        up to ``pipeline_max`` (a group is never split: on a cluster, one shard's entries in a row);
        a shard's entries past the batch wait whole behind it (its next commit). Cancelled: dropped."""
        busy, room = self._busy, self._pipeline_max
        batch: list[Pending] = []
        rest: list[Pending] = []
        for p in self._pending:
            if p.done.done():
                continue  # cancelled before it was sent: never is
            if p.shard in busy or (len(batch) >= room and not (p.group and batch[-1].group == p.group)):
                rest.append(p)
            else:
                batch.append(p)
        return batch, rest

    async def _send_each(self, calls: list[Call], left: dict[int, list[Pending]]) -> None:
        """One batch's calls; each primary's entries answered, and their shards freed, as soon as it has
        answered. Whatever ends the run answers the entries not answered yet: none is left waiting,
        nor its shard's slot taken."""
        answer = partial(self._answered, left, time.perf_counter())
        try:
            with span(self.tracer, "atp.log.append", entries=sum(map(len, left.values()))):  # none unless tracing
                await self.nodes.run_each(calls, answer)
        except Exception as exc:  # whatever it was, the entries are in doubt
            answer(list(left), [exc] * len(left))
        except BaseException:
            answer(list(left), [abandoned_write()] * len(left))
            raise

    def _answered(self, left: dict[int, list[Pending]], started: float | None, at: list[int],
                  replies: list[Any]) -> None:
        """The calls ``at`` of a batch ended with ``replies``: their entries answered, their shards freed."""
        if started is not None:
            self.metrics.append_seconds.observe(time.perf_counter() - started)
        answered = [left.pop(i) for i in at]
        for unit, reply in zip(answered, replies, strict=True):
            try:
                self._answer(unit, reply)
            except Exception as exc:  # a reply not of the call's shape: in doubt (R7), never unanswered
                error = unreadable_reply(exc)
                for p in unit:
                    p.settle(error)
        self._freed(unit[0].shard for unit in answered)

    def _ended(self, left: dict[int, list[Pending]], task: asyncio.Task[None]) -> None:
        """A batch's task is over. Entries it left unanswered — a task cancelled before it ran (the loop
        shutting down) sent nothing, nor answered anything — are answered now and their shards freed:
        else each such shard's later entries waited for ever behind a commit that never was (liveness)."""
        self._tasks.discard(task)
        if left:
            self._answered(left, None, list(left), [abandoned_write()] * len(left))

    def _freed(self, shards: Iterable[int]) -> None:
        """The commits of ``shards`` are over: their entries waiting may go."""
        self._busy.difference_update(shards)
        if self._pending and not self._scheduled:
            self._schedule(self._running_loop())

    def _unpackable(self, batch: list[Pending], exc: Exception) -> None:
        """A batch whose script call could not be put together fails whole, as a write that did not
        reach Redis (its shards log the failure); the log goes on with the next."""
        error = DataError(f"a log entry cannot be sent to Redis: {exc!r}")
        for p in batch:
            p.settle(error)

    # -- of ``LogStore`` ------------------------------------------------------------------------
    def _calls(self, batch: list[Pending]) -> tuple[list[Call], list[list[Pending]]]:
        raise NotImplementedError

    def _answer(self, unit: list[Pending], reply: Any) -> None:
        raise NotImplementedError

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError
