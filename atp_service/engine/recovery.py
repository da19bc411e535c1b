"""A shard's state after a restart: its latest snapshot, then its log after it (E10, R7)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

import msgspec

from atp_service.config import EngineSettings
from atp_service.engine.clock import CountingClock
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.storage.leases import taken_over
from atp_service.storage.log import Fenced, LogStore, SnapshotUnreadable
from atp_service.tasks import in_turns
from reservation import Ledger, Limits, decode_entry
from reservation._restore import RESTORE_SLICE, restoring
from reservation._snapshot import SnapshotInconsistent

T = TypeVar("T")
log = logging.getLogger(__name__)


class Retrying(Protocol):
    """Runs a step that reads Redis until it is done (``app.redis_wait``); a plain await: once."""

    def __call__(self, attempt: Callable[[], Awaitable[T]], /) -> Awaitable[T]: ...


async def once(attempt: Callable[[], Awaitable[T]]) -> T:
    return await attempt()


class LogHole(RuntimeError):
    """A shard's log skips entries: Redis lost entries the service had acknowledged as durable."""

    def __init__(self, shard: int, before: int, after: int) -> None:
        super().__init__(f"shard {shard}: its log jumps from entry {before} to {after}; entries acknowledged as "
                         "durable are missing (restore Redis from a backup)")


class LogCutShort(RuntimeError):
    """A shard's log does not reach the entry its snapshot or its newest id says was written: entries
    trimmed by hand (XTRIM, MAXLEN) or a stream deleted. Served, the shard would answer from the state
    before them and refuse every write (each entry's id is taken), health SERVING."""

    def __init__(self, shard: int, recovered: int, newest: int) -> None:
        super().__init__(
            f"shard {shard}: recovery reached entry {recovered} (snapshot and log), but its log's newest id is "
            f"{newest}; entries acknowledged as durable are missing (the log trimmed or deleted by hand?): "
            "restore Redis from a backup")


class LogGone(RuntimeError):
    """A shard's log is missing (deleted by hand, evicted), with no snapshot, though entries were appended to it
    (its ``log-begun`` key): served, the shard would answer as if it had never held anything — every reservation
    and fact acknowledged there gone, health SERVING, its next entries written from 1 again."""

    def __init__(self, shard: int, key: str, mark: str) -> None:
        super().__init__(f"shard {shard}: its log {key} is missing and it has no snapshot, but entries were appended "
                         "to it; entries acknowledged as durable are missing (the log deleted by hand or evicted?): "
                         f"restore Redis from a backup, or, the loss accepted, DEL {mark} to serve the shard empty")


class LogUnreadable(RuntimeError):
    """A shard's log holds an entry this version cannot decode: written by a newer version (an event
    or a field it added), read after a rollback. Replayed without it, the shard would serve state
    short of what was acknowledged (E10); replay stops there instead."""

    def __init__(self, shard: int, seq: int, key: str, reason: str) -> None:
        super().__init__(
            f"shard {shard}: entry {seq} of its log {key} is not in this version's layout ({reason}); it was "
            "written by another version: start the version that wrote it, or restore Redis from a backup "
            "this version wrote")


UNRECOVERABLE: tuple[type[Exception], ...] = (LogHole, LogCutShort, LogGone, LogUnreadable, SnapshotUnreadable)
"""A recovery refused for its data (R7, E10): the same reads fail alike until an operator acts, no wait cures it."""


REPLAY_SLICE = 20_000
"""Events of a shard's log replayed between two turns of the event loop (~0.1 s of work at most)."""


RECOVERY_READS = 3
"""Reads of a shard's snapshot and log a recovery makes at most while Redis's state changes under it."""


async def recover_shard(store: LogStore, shard: int, limits: Limits, restore_slice: int = RESTORE_SLICE,
                        replay_slice: int = REPLAY_SLICE, reads: int = RECOVERY_READS) -> tuple[Ledger, int, int]:
    """(ledger, seq of the last entry applied, entries replayed). Live equals replay: the same
    events applied in the same order (E10). Raises ``LogHole`` when the log skips an entry (the
    append script never leaves one), ``LogCutShort`` when it ends elsewhere than at its newest id
    (one that changed meanwhile has both read again, ``reads`` times in all at most),
    ``LogUnreadable`` at an entry another version wrote that this one cannot decode.
    The snapshot's reservations and the log's events go a slice at a time with a turn of the event
    loop between: a group taken over (leases) while this process serves others must not hold their
    calls and lease renewals for the seconds a large shard takes. Refused for its data where another instance
    has taken the shard over meanwhile: ``Fenced`` instead (``_judged``)."""
    try:
        return await _recovered(store, shard, limits, restore_slice, replay_slice, reads)
    except UNRECOVERABLE as exc:
        await _judged(store, shard, exc)
        raise


async def _judged(store: LogStore, shard: int, exc: BaseException) -> None:
    """``Fenced`` where a newer owner took ``shard`` over while it was recovered: what it wrote meanwhile landed
    between the recovery's reads (a process paused there, a reply delayed on the way), which then add up to no
    log Redis ever held — its entry 1 landed after the log was read missing (``LogGone``), entries appended and
    trimmed past the snapshot read (``LogHole``, ``LogCutShort``). Not Redis losing data: the group is the newer
    owner's to recover, and a refusal here would be an operator paged and a start exiting 2 for nothing."""
    if await taken_over(store, shard):
        raise Fenced(f"shard {shard}: taken over by a newer owner while it was recovered (its reads, mixing the "
                     f"newer owner's writes, added up to a {type(exc).__name__})") from exc  # not its text: no page


async def _recovered(store: LogStore, shard: int, limits: Limits, restore_slice: int, replay_slice: int,
                     reads: int) -> tuple[Ledger, int, int]:
    for read in range(1, reads + 1):
        # Read first (nothing is appended to the log while it is recovered), and again below only where
        # the replay ended elsewhere. The owner check's read (one shard's of it): the simulation draws its
        # faults apart, so its regression seeds keep their schedules.
        newest = (await store.last_seqs([shard]))[0]
        ledger, seq, replayed = await _replayed(store, shard, limits, restore_slice, replay_slice)
        if seq == newest:
            return await _begun_checked(store, shard, ledger, seq, replayed)
        # R7: a trim past the snapshot (the log emptied), or a snapshot past the log's end. Asked again
        # first: Redis restarted from older data while this ran (snapshot and log went back together)
        # leaves a log that ends where the replay did, which is served (what Redis holds), not refused.
        now = (await store.last_seqs([shard]))[0]
        if seq == now:
            return await _begun_checked(store, shard, ledger, seq, replayed)
        if now == newest or read == reads:
            raise LogCutShort(shard, seq, now)
        # The newest id changed, with nothing appended: Redis came back from older data (a restart, a
        # failover to a lagging replica) between the reads — the snapshot read from the Redis before, the
        # log from the one after add up to neither, not to a log cut short (exit 2): read both again.
        log.warning("shard %d: Redis's log changed while it was recovered (newest id %d, then %d); recovered again",
                    shard, newest, now, extra={"event": "recovery_reread", "shard": shard, "newest": newest,
                                               "now": now})
    raise AssertionError("unreachable: the last read returns or raises")


async def _begun_checked(store: LogStore, shard: int, ledger: Ledger, seq: int,
                         replayed: int) -> tuple[Ledger, int, int]:
    """``(ledger, seq, replayed)``, unless nothing was recovered (no snapshot, no log) from a log that was begun:
    then ``LogGone``. The one loss neither a snapshot's seq nor the stream's newest id can show (R7). A log an
    earlier build began has none until this version's first append to it: deleted before that, it is served empty."""
    if not seq and await store.log_begun(shard):
        raise LogGone(shard, store.keys.log(shard), store.keys.log_begun(shard))
    return ledger, seq, replayed


async def _replayed(store: LogStore, shard: int, limits: Limits, restore_slice: int,
                    replay_slice: int) -> tuple[Ledger, int, int]:
    """The shard's snapshot, then its log after it: (ledger, seq of the last entry applied, entries replayed)."""
    snap = await store.load_snapshot(shard)
    ledger = Ledger(shard, limits)
    if snap:
        try:
            await in_turns(restoring(ledger, snap.ledger, restore_slice))
        except SnapshotInconsistent as exc:  # another build's columns: refused whole, never restored in part (E10)
            raise SnapshotUnreadable(f"shard {shard}: the snapshot at {store.keys.snap(shard)} is not in this "
                                     f"version's layout ({exc}); start the version that wrote it, or restore "
                                     "Redis from a backup this version wrote") from None
    seq = snap.seq if snap else 0
    replayed = since_turn = 0
    async for entry_seq, data in store.entries_after(shard, seq):
        if entry_seq != seq + 1:
            raise LogHole(shard, seq, entry_seq)
        try:
            entry = decode_entry(data)
        except msgspec.MsgspecError as exc:  # not a fault to retry: the same bytes fail the same way
            raise LogUnreadable(shard, entry_seq, store.keys.log(shard), str(exc)) from None
        ledger.replay(entry)
        seq = entry_seq
        replayed += 1
        since_turn += len(entry.events)
        if since_turn >= replay_slice:
            since_turn = 0
            await asyncio.sleep(0)
    return ledger, seq, replayed


async def recover_actors(store: LogStore, clock: CountingClock, settings: EngineSettings,
                         metrics: EngineMetrics, retrying: Retrying = once) -> tuple[list[ShardActor], int]:
    """Every shard's actor, recovered (not started), and the entries replayed in all. The clock's
    floor is raised to the newest timestamp logged (R6: never stamp a command before one already logged).
    ``retrying`` runs each shard's recovery: the start's waits for Redis try a shard again from its
    snapshot, not the shards recovered already."""
    actors, replayed, newest = [], 0, 0
    for shard in range(settings.shards):
        ledger, seq, n = await retrying(partial(recover_shard, store, shard, settings.limits))
        replayed += n
        newest = max(newest, ledger.clock)
        actors.append(ShardActor(shard, ledger, store, clock, settings.shard_settings, seq, metrics,
                                 snapshot_seq=seq - n))
    clock.advance_floor(newest)  # every process's clock can: skipped, it stamped below its own log
    return actors, replayed
