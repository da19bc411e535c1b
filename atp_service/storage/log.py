"""The durable log: one Redis stream per shard, group-committed, plus snapshots.

Entry ids are chosen by the service (``<seq>-0``, seq counting up per shard), so
an append whose answer was lost can be settled by reading the stream's last id,
and a repeated append is refused by Redis instead of being logged twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.exceptions import RedisError, ResponseError

from atp_service.metrics import StorageMetrics
from atp_service.storage.append_resp import AppendPacker
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log_reads import LogReads
from atp_service.storage.nodes import Call, Nodes, Script, connect
from atp_service.storage.records import (
    UNCLAIMED,
    CrossGroupWrite,
    Fenced,
    Pending,
    SnapshotRecord,
    SnapshotUnreadable,
    claimed,
    encode_snapshot,
    number_of,
    unreadable_reply,
    wall_ms,
)
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import APPEND_SCRIPT, CLAIM_AT_SCRIPT, CLAIM_SCRIPT, EPOCH_SCRIPT, FENCE_SCRIPT
from atp_service.storage.slots import CommitSlots
from atp_service.storage.snapshot_parts import PIECE_BYTES, write_snapshot_in_parts
from atp_service.storage.solo import SoloCommit
from atp_service.storage.window import CommitWindow
from atp_service.traces import span

__all__ = ["CommitWindow", "CrossGroupWrite", "Fenced", "LogStore", "SnapshotRecord", "SnapshotUnreadable", "connect",
           "encode_snapshot"]

class LogStore(SoloCommit, CommitSlots, LogReads):
    """Appends shard entries in shared pipelines (one round trip per event-loop turn, or per commit
    window when busy); on a Redis Cluster, a commit in flight per shard at most (``slots.py``)."""

    _APPEND, _FENCE, _CLAIM, _EPOCH, _CLAIM_AT = (
        Script(body) for body in (APPEND_SCRIPT, FENCE_SCRIPT, CLAIM_SCRIPT, EPOCH_SCRIPT, CLAIM_AT_SCRIPT))

    def __init__(self, client: Any, prefix: str, pipeline_max: int, max_in_flight: int = 1,
                 window: CommitWindow | None = None, metrics: StorageMetrics | None = None) -> None:
        self.nodes: Nodes = client if isinstance(client, Nodes) else Nodes(client)
        self.client: Any = self.nodes.reader
        """For reads (on a cluster, it routes each read by its key)."""
        self.metrics = metrics or StorageMetrics()
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self._pipeline_max = pipeline_max
        self._pending: list[Pending] = []
        self._first_pending_at = 0.0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # a commit waiting for company (CommitWindow)
        self._in_flight = 0  # one Redis: group commits in flight (a cluster: per shard, ``_busy``)
        self._max_in_flight = max_in_flight
        self._busy = set()
        self._window = window or CommitWindow(0.0, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # ``_running_loop``
        self._groups = 0
        self._packer = AppendPacker(self._APPEND.sha, self._keys_of)
        # What a one-entry commit updates in place (``solo.py``), each read once here.
        self._sizes = self.metrics.pipeline_size.sizes
        self._append_seconds = self.metrics.append_seconds._children[()]  # the family's one series: no labels
        self.snapshots_in_flight = 0
        """Snapshot writes under way (``Checkpoints`` counts them). Shards snapshot one at a time unless
        stopping: those whose snapshots fall due together (same interval, same start) must not hand
        Redis all their state at once, which stalls every append behind it."""
        self._tokens: dict[int, int] = {}
        """Per shard, the fence value its writes carry (``fence``); a write is refused once the
        stored fence is above it."""
        self.epochs: dict[int, str] = {}
        """Per group (a shard, or ``CHANNELS``), this instance's claim on it (``claim``): the epoch its
        writes carry, the owner key's whole value (``records.claimed``); a group not claimed is written
        with ``UNCLAIMED``, which every owner key refuses."""
        self.claim_token = secrets.token_hex(8)  # its claims, resent or late, are one; its epochs' identity
        self.fenced = self.claim_lost = False
        """A write was refused: a newer instance owns the keyspace (``claim_lost``: none does, Redis
        lost this instance's claim, ``Fenced.claim_lost``). Final."""
        self.on_fenced: list[Callable[[], None]] = []
        self.leased = False
        """Groups are owned one by one (``leases.GroupLeases``), by several processes: a refused
        write loses its group only (``lost``), and no write spans groups."""
        self.lost: set[int] = set()
        """Leased groups whose writes were refused since they were taken: another process owns them."""
        self.on_group_lost: list[Callable[[int], None]] = []
        self.tracer: Any = None  # while tracing is on (app.tracing), a span per group commit

    @property
    def together(self) -> bool:
        """Whether entries of several groups can land all or none (one Redis: yes; a cluster: no)."""
        return self.nodes.together and not self.leased

    @property
    def epoch(self) -> int:
        """The number of this instance's epoch: the highest drawn for its claims (0: none yet)."""
        return max(map(number_of, self.epochs.values()), default=0)

    async def claim(self, shards: int) -> int:
        """Own every shard's group and the channel feeds' from now on, adopting each group's fence:
        every later write of an older instance is refused. Called before recovery reads the log, so
        whatever an older instance wrote first is read back. Returns the epoch's number (``epoch``).
        On one Redis one script claims them all; on a cluster, an epoch no other claim has is drawn
        first, then each group is taken with it unless a newer claim holds it (``Fenced``)."""
        groups = [*range(shards), CHANNELS]
        if not self.nodes.together:
            return await self._claim_each(groups)
        keys = [k for g in groups for k in (self.keys.owner(g), self.keys.fence(g))]
        call = Call(self._CLAIM, [*keys, self.keys.claimants], [self.claim_token, wall_ms()])
        number, *fences = (int(v) for v in await self.nodes.run_one(call))
        epoch = claimed(number, self.claim_token)  # as the script wrote it, or the claim answered again did
        for group, fence in zip(groups, fences, strict=True):
            self.epochs[group], self._tokens[group] = epoch, fence
        return self.epoch

    async def _claim_each(self, groups: list[int]) -> int:
        """``claim`` on a cluster: one call per group (of instances claiming at once, the one whose
        epoch was drawn last owns every group; each of the others is refused, or overwritten)."""
        owners: Any = await self.client.mget_nonatomic([self.keys.owner(g) for g in groups])
        top = max(map(number_of, owners), default=0)
        number = int(await self.nodes.run_one(Call(self._EPOCH, [self.keys.claims], [top, wall_ms()])))
        epoch = claimed(number, self.claim_token)
        calls = [Call(self._CLAIM_AT, [self.keys.owner(g), self.keys.fence(g)], [epoch]) for g in groups]
        for group, reply in zip(groups, await self.nodes.run(calls), strict=True):
            if isinstance(reply, BaseException):
                raise self._refused(reply)
            self.epochs[group], self._tokens[group] = epoch, int(reply)
        return self.epoch

    def adopt(self, group: int, epoch: str, fence: int) -> None:
        """Write ``group`` from now on as ``epoch`` (its owner, see ``leases.GroupLeases``), carrying
        its fence ``fence``."""
        self.epochs[group], self._tokens[group] = epoch, max(self._tokens.get(group, 0), fence)
        self.lost.discard(group)

    def drop(self, group: int) -> None:
        """Stop writing ``group``: anything of it submitted from now on, or still waiting, is refused."""
        self.epochs.pop(group, None)

    def is_fenced(self, group: int) -> bool:
        """Whether writes of ``group`` are refused for good by this process's standing: the keyspace
        has a newer owner, or (leased) the group does."""
        return self.fenced or group in self.lost

    async def fence(self, shard: int) -> None:
        """Make every write of ``shard`` sent before now impossible to land (R7): raise its fence
        and carry the new value from here on. Whatever the log holds afterwards is final (with
        ``wait_replicas``, on that many replicas too: the fence follows those writes)."""
        epoch = self.epochs.get(shard, UNCLAIMED)
        call = Call(self._FENCE, [self.keys.owner(shard), self.keys.fence(shard)], [epoch, self._tokens.get(shard, 0)])
        try:
            raised = int(await self.nodes.run_one(call))
        except RedisError as exc:
            raise self._refused(exc, shard, epoch) from None
        # Two fences may overlap (a settle and a snapshot after a stop): the higher one stands.
        self._tokens[shard] = max(self._tokens.get(shard, 0), raised)

    async def still_owner(self, group: int | None = None) -> bool:
        """False (and fenced from now on) once a newer instance has claimed a group of this one;
        with ``group``, judged by that group's owner key alone (a settle: what the group's log holds is
        this instance's while it owns the group, R7), which on a cluster is read on that group's primary
        alone: one that does not answer holds no other primary's shards (liveness); without, by the owner
        keys of the primaries that answer (a newer claim raises every one). Leased groups: whether this
        process still owns ``group`` (another's loss is not this one's)."""
        if self.fenced:
            return False
        if self.leased and group is None:
            return False
        # Judged against the claims the read was made for.
        claims: dict[int, str | None] = dict(self.epochs) if group is None else {group: self.epochs.get(group)}
        keys = [self.keys.owner(g) for g in claims]
        for g, current in zip(claims, await self.values_answered(keys), strict=True):
            # The whole epoch: a number drawn again is another claim's.
            if not isinstance(current, BaseException) and as_text(current) != claims[g]:
                self._refused(Fenced(f"FENCED epoch {claims[g]} of {self.keys.owner(g)} was replaced by "
                                     f"{as_text(current)}"), g, claims[g])
                return False
        return not self.fenced  # nor refused meanwhile

    def _refused(self, exc: BaseException, group: int | None = None, epoch: str | None = None) -> BaseException:
        """``exc``, as ``Fenced`` when it says the keyspace (leased: ``group``, as written with
        ``epoch``) has a newer owner (noted, once). A refusal of an older taking of a leased group
        than the current one says nothing about the current one."""
        if not (isinstance(exc, Fenced) or (isinstance(exc, ResponseError) and str(exc).startswith("FENCED"))):
            return exc
        if self.leased:
            current = self.epochs.get(group) if group is not None else None
            if group is not None and current is not None and epoch in (None, current) and group not in self.lost:
                self.lost.add(group)
                for lost in self.on_group_lost:
                    lost(group)
        elif not self.fenced:
            self.fenced, self.claim_lost = True, Fenced(str(exc)).claim_lost
            for callback in self.on_fenced:
                callback()
        return exc if isinstance(exc, Fenced) else Fenced(str(exc))

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

    async def write_snapshot(self, shard: int, seq: int, data: bytes, extra_s: float = 0.0,
                             part_bytes: int = 0, piece_bytes: int = PIECE_BYTES) -> int:
        """Store a snapshot (``encode_snapshot``) and trim the log behind it, atomically; past
        ``part_bytes`` (0: while it fits one key) in parts, past ``piece_bytes`` in several keys
        (``snapshot_parts``). Returns its size in bytes.
        ``Checkpoints`` encodes it in the shard's turn, then writes it while the shard goes on,
        allowing it ``extra_s`` beyond the socket timeout for its size."""
        epoch = self.epochs.get(shard, UNCLAIMED)
        try:
            await write_snapshot_in_parts(self.nodes, self.keys, shard, seq, data,
                                          (epoch, self._tokens.get(shard, 0)), part_bytes, extra_s, piece_bytes)
        except RedisError as exc:
            raise self._refused(exc, shard, epoch) from None
        return len(data)

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

    def _keys_of(self, shard: int) -> tuple[str, str, str]:
        """The keys an append of ``shard`` names."""
        return self.keys.owner(shard), self.keys.log(shard), self.keys.fence(shard)

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
