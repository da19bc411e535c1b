"""A shard's state after a restart: its latest snapshot, then its log after it (E10, R7)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

from atp_service.config import EngineSettings
from atp_service.engine.clock import Clock
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics
from atp_service.storage.log import LogStore
from reservation import Ledger, Limits, decode_entry

T = TypeVar("T")


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


async def recover_shard(store: LogStore, shard: int, limits: Limits) -> tuple[Ledger, int, int]:
    """(ledger, seq of the last entry applied, entries replayed). Live equals replay: the same
    events applied in the same order (E10). Raises ``LogHole`` when the log skips an entry (the
    append script never leaves one)."""
    snap = await store.load_snapshot(shard)
    ledger = Ledger.restore(shard, limits, snap.ledger) if snap else Ledger(shard, limits)
    seq = snap.seq if snap else 0
    replayed = 0
    async for entry_seq, data in store.entries_after(shard, seq):
        if entry_seq != seq + 1:
            raise LogHole(shard, seq, entry_seq)
        ledger.replay(decode_entry(data))
        seq = entry_seq
        replayed += 1
    return ledger, seq, replayed


async def recover_actors(store: LogStore, clock: Clock, settings: EngineSettings,
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
    advance = getattr(clock, "advance_floor", None)
    if advance is not None:
        advance(newest)
    return actors, replayed
