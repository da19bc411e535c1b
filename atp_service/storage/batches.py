"""Group commits the general way: the entries waiting cut into script calls (one on one Redis, one per
group on a cluster, ``slots.py``), written or sent by a task, and each entry answered from its call's
reply; and entries of several shards queued to land all or none (``submit_group``). ``LogStore``
builds on it; a commit of one entry alone goes its own way (``solo.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.exceptions import RedisError

from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import Call
from atp_service.storage.records import UNCLAIMED, CrossGroupWrite, Pending, unreadable_reply
from atp_service.storage.solo import CommitState
from atp_service.traces import span


class BatchCommit(CommitState):
    """``LogStore``'s group commits of several entries (``_flush_batches``) and their answers (``_answer``)."""

    keys: Keyspace
    _pipeline_max: int
    _groups: int
    leased: bool
    tracer: Any

    @property
    def together(self) -> bool:
        """Whether entries of several groups can land all or none (one Redis: yes; a cluster: no)."""
        return self.nodes.together and not self.leased

    def submit_group(self, entries: Sequence[tuple[int, int, bytes]]) -> asyncio.Future[None]:
        """Queue entries of several shards (shard, seq, data) that land all or none (a cross-shard
        change, R2); one future for all of them. ``CrossGroupWrite`` where Redis cannot make them
        land together (a cluster: one script per group)."""
        if not self.together and len({shard for shard, _, _ in entries}) > 1:
            raise CrossGroupWrite(f"entries of shards {sorted({s for s, _, _ in entries})} cannot land all or none "
                                  "on a Redis Cluster (one script call per group)")
        loop, fut = self._arrival()
        group = 0
        if len(entries) > 1:
            self._groups += 1
            group = self._groups
        tokens, epochs = self._tokens, self.epochs
        self._pending += [Pending(shard, seq, data, epochs.get(shard, UNCLAIMED), tokens.get(shard, 0), group, fut)
                          for shard, seq, data in entries]
        self._kick(loop)
        return fut

    def _arrival(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]:
        """An entry arrives (the commit window counts it): its future."""
        loop = self._running_loop()
        now = loop.time()
        self._window.arrived(now)
        if not self._pending:
            self._first_pending_at = now
        return loop, loop.create_future()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the appends run on, asked for again only once the one kept is not running:
        in Python 3.11 each ``get_running_loop`` makes a ``getpid`` system call (every entry's)."""
        loop = self._loop
        if loop is None or not loop.is_running():  # another loop than the one kept: ask again
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._schedule(loop)
        elif self._timer is not None and self._window.full(len(self._pending)):
            self._timer.cancel()  # the company it waited for is here
            self._timer = None
            loop.call_soon(self._flush, loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = True
        window = self._window
        if window.busy:  # else ``wait_s`` is 0: sent in the next turn
            wait = window.wait_s(self._first_pending_at, loop.time())
            if wait > 0 and not window.full(len(self._pending)):  # else its company is already here
                self._timer = loop.call_later(wait, self._flush, loop)
                return
        loop.call_soon(self._flush, loop)
    def _flush_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        """Group commit, the general way (``SoloCommit._flush`` sends an entry waiting alone): while a
        pipeline is in flight, new entries wait and go together in the next."""
        if self.nodes.cluster:
            return self._flush_each(loop)  # a commit slot per shard: a hung primary holds its own alone
        pending = self._pending  # the same list throughout (changed in place): read once per flush
        for p in pending:
            if p.done.done():  # cancelled: never sent (a loop first: most flushes have none)
                pending = self._pending = [p for p in pending if not p.done.done()]
                break
        while pending and self._in_flight < self._max_in_flight:
            cut = min(self._pipeline_max, len(pending))
            while cut < len(pending) and pending[cut].group and pending[cut].group == pending[cut - 1].group:
                cut += 1  # a group is never split between two script calls
            batch = pending[:cut]
            del pending[:cut]
            self._first_pending_at = loop.time()  # what stays waits from now on
            self._in_flight += 1
            self.metrics.pipeline_size.observe(len(batch))
            try:
                calls, units = self._calls(batch)
            except Exception as exc:  # an entry that cannot be packed: nothing was sent
                self._unpackable(batch, exc)
                self._sent(None)  # the commit is over: the log goes on with the next
                continue
            if self._begin(calls, units):
                continue  # written already; answered from the connection's protocol, no task
            # A task: a Redis Cluster, replicas to wait for, no idle connection, or a span to trace.
            task = loop.create_task(self._send(calls, units), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(partial(self._commit_ended, units))

    def _sent(self, task: asyncio.Task[None] | None) -> None:
        """A group commit is over (its entries answered, or its task ended): the next may go."""
        if task is not None:
            self._tasks.discard(task)
        self._in_flight -= 1
        if self._pending and not self._scheduled:
            self._schedule(self._running_loop())

    def _calls(self, batch: list[Pending]) -> tuple[list[Call], list[list[Pending]]]:
        """The script calls of a group commit: one for all on one Redis, one per group on a cluster."""
        if not (self.nodes.cluster or self.leased):  # ``together``, without its two property frames
            keys, packed = self._packer.pack(batch)
            return [Call(self._APPEND, keys, [], packed)], [batch]
        by_shard: dict[int, list[Pending]] = {}
        for p in batch:
            by_shard.setdefault(p.shard, []).append(p)
        units = list(by_shard.values())
        pack = self._packer.pack
        calls = []
        for unit in units:
            keys, packed = pack(unit)
            calls.append(Call(self._APPEND, keys, [], packed))
        return calls, units

    def _keys_of(self, shard: int) -> tuple[str, str, str, str]:
        """The keys an append of ``shard`` names."""
        return self.keys.owner(shard), self.keys.log(shard), self.keys.fence(shard), self.keys.log_begun(shard)

    def _begin(self, calls: list[Call], units: list[list[Pending]]) -> bool:
        """The group commit written now, without a task, where ``Nodes.begin`` can (never while tracing:
        a span needs a task). False, also when it raised: nothing was sent, and the task answers the
        entries with whatever it meets."""
        try:
            # Positional arguments only: a partial without keywords is called by vectorcall.
            return self.tracer is None and self.nodes.begin(calls, partial(self._replied, units, time.perf_counter(),
                                                                           True))
        except Exception:
            return False

    async def _send(self, calls: list[Call], units: list[list[Pending]]) -> None:
        started = time.perf_counter()
        try:
            with span(self.tracer, "atp.log.append", entries=sum(map(len, units))):  # no span unless tracing is on
                replies = await self.nodes.run(calls)
        except Exception as exc:  # whatever it was, the entries are in doubt: never left unanswered
            replies = [exc] * len(calls)
        self._replied(units, started, False, replies)

    def _replied(self, units: list[list[Pending]], started: float, begun: bool, replies: list[Any]) -> None:
        """Answer each entry of a group commit from its call's reply; ``begun``: it was sent without
        a task (``Nodes.begin``), so the commit is over here too."""
        try:
            self.metrics.append_seconds.observe(time.perf_counter() - started)
            for unit, reply in zip(units, replies, strict=True):
                self._answer(unit, reply)
        except Exception as exc:  # a reply no append returns: whether they landed is unknown (R7), never a wedge
            error = unreadable_reply(exc)
            for unit in units:  # (those answered already are not again)
                self._answer(unit, error)
        finally:
            if begun:
                self._sent(None)

    def _answer(self, unit: list[Pending], reply: Any) -> None:
        """Settle each entry's future with its part of one call's reply (a script's refusal of an
        entry starts with ``!``). Every future first, then their callbacks: a shard told of its
        first entry's failure sees how its later entries of this call ended (refused OOM: not in doubt)."""
        if isinstance(reply, BaseException):
            error = self._refused(reply, unit[0].shard, unit[0].epoch)
            answered = [p for p in unit if p.resolve(error)]
        elif len(unit) == 1:  # one entry (most commits while the log is not busy): no list, no comprehension
            (p,), (result,) = unit, reply  # ValueError where the counts differ, as zip(strict=True)
            if p.resolve(RedisError(result[1:].decode(errors="replace")) if result[:1] == b"!" else None):
                p.notify()
            return
        else:  # every outcome read before any entry is settled: a reply that cannot be read settles none (R7)
            outcomes = [RedisError(result[1:].decode(errors="replace")) if result[:1] == b"!" else None
                        for result in reply]
            if len(outcomes) != len(unit):  # (``zip(strict=True)`` raises only once every entry is settled)
                raise ValueError(f"{len(outcomes)} results for {len(unit)} entries")
            answered = [p for p, outcome in zip(unit, outcomes, strict=True) if p.resolve(outcome)]
        for p in answered:
            p.notify()

    def unsent(self, done: asyncio.Future[None]) -> bool:
        """Whether the entry of ``done`` still waits for a group commit: cancelled now, it never reaches Redis."""
        return any(p.done is done for p in self._pending)

    # -- of ``LogStore`` (``_flush``, ``_flush_each``, ``_unpackable`` and ``_commit_ended`` are ``SoloCommit``'s
    # and ``CommitSlots``': declared only, a stub here would come first) ---
    _flush: Callable[[asyncio.AbstractEventLoop], None]
    _flush_each: Callable[[asyncio.AbstractEventLoop], None]
    _unpackable: Callable[[list[Pending], Exception], None]
    _commit_ended: Callable[[list[list[Pending]], asyncio.Task[None]], None]

    def _refused(self, exc: BaseException, group: int | None = None, epoch: str | None = None) -> BaseException:
        raise NotImplementedError
