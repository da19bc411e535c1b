"""What a shard does about its log besides appending: settling appends in doubt, and snapshots.

Both write or read Redis while the shard holds nothing in flight; both are fenced (R7): a write
whose answer was lost may still reach Redis, so before trusting what the log holds the shard
raises its fence (``LogStore.fence``) — from then on nothing it sent before can land.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.config import SnapshotPolicy
from atp_service.logs import noted_now_and_then
from atp_service.retry import Backoff, BackoffPolicy, retry_until_done
from atp_service.storage.log import Fenced, LogStore, encode_snapshot
from atp_service.storage.nodes import NotReplicated
from atp_service.storage.resp import out_of_memory
from reservation import Ledger, LogEntry

log = logging.getLogger(__name__)

STORAGE_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
"""Redis did not answer, or not for sure. ``RedisClusterException`` is no ``RedisError``: a cluster
client raises it when no node answers its slot map query (every node down or cut off)."""
TIMEOUTS = (RedisTimeoutError, TimeoutError)
"""Redis did not answer in time (``asyncio.TimeoutError`` is ``TimeoutError``)."""
SNAPSHOT_RETRY_FIRST_S = 1.0
"""Wait after a first failed snapshot (capped by ``ServiceConfig.snapshot_retry_max_s``)."""
SETTLE_RETRY = BackoffPolicy(first_s=0.05, max_s=1.0)
"""Waits of a settle between tries to fence and read the log while Redis does not answer."""
SETTLE_LOG_EVERY_S = 30.0
"""A settle that cannot fence and read logs ``settle_waiting`` at its first failed try, then at most this often."""

def append_failure_reason(error: BaseException | None) -> str:
    """Why an append failed, one of ``metrics.APPEND_FAILURE_REASONS`` (``None``: its future was cancelled). A
    full Redis, a slow one, one gone and a newer owner each need a different act of the operator, and
    the failures counter alone could not tell them apart. Timeouts first: ``TimeoutError`` is an ``OSError``."""
    if error is None:
        reason = "other"
    elif out_of_memory(error):
        reason = "out_of_memory"
    elif isinstance(error, Fenced):
        reason = "fenced"
    elif isinstance(error, NotReplicated):  # landed on the primary; the replicas lag (not an ACL or a script)
        reason = "not_replicated"
    elif isinstance(error, TIMEOUTS):
        reason = "timeout"
    elif isinstance(error, (RedisConnectionError, OSError, RedisClusterException)):
        reason = "connection"
    elif isinstance(error, RedisError) and not isinstance(error, DataError):
        reason = "refused"  # by Redis (TRYAGAIN, NOPERM) or the append script (STALE, TAKEN, GAP)
    else:
        reason = "other"
    return reason


Doubt = list[tuple[int, LogEntry, bytes]]
"""Appends that failed and may have landed: (seq, entry, the bytes sent), oldest first."""


class LogDiverged(AssertionError):
    """The log holds an entry this shard did not send where it expected its own: memory cannot be
    trusted to match it, so the shard stops (its task ends; see ``ShardActor._ended``)."""


async def said_if_diverged(drain: Awaitable[None], shard: int, logger: logging.Logger) -> None:
    """A stop's drain of ``shard``, a log it cannot trust (``LogDiverged``) said as it is found, in the drain's own
    task (``shard_stop_diverged``): a stop cancelled as its drain ends raises its cancellation, not the failure, and
    the line was lost with it (``tasks.run_bounded`` marks the failure of work its caller left as seen)."""
    try:
        await drain
    except LogDiverged:
        logger.exception("shard %d: stopping with a log it cannot trust", shard,
                         extra={"event": "shard_stop_diverged", "shard": shard})


def log_short(shard: int, newest: int, durable: int) -> LogDiverged:
    """The refusal of a shard whose log ends at ``newest``, before the entry ``durable`` it made durable."""
    return LogDiverged(f"shard {shard}: its log ends at entry {newest}, but entry {durable} was durable: Redis "
                       "lost acknowledged entries (a failover to a lagging replica, eviction, or a crash without "
                       "appendfsync always)")


def log_foreign(shard: int, newest: int, sent: int) -> LogDiverged:
    """The refusal of a shard whose log holds entry ``newest``, past ``sent``, the newest it ever sent."""
    return LogDiverged(f"shard {shard}: its log holds entry {newest}, but this shard sent none past entry {sent}: "
                       "another writer added it past the owner key's check")


async def landed_of(store: LogStore, shard: int, seq: int, doubt: Doubt) -> list[tuple[int, LogEntry]] | None:
    """Of ``doubt`` (entries after ``seq``), those that reached the log, in order; None when this
    instance was replaced (it applies nothing more). Fence first, then read, then compare byte for
    byte: an id taken by other content is never read as a landing of our own (R7). Waits for
    Redis as long as it takes: the shard takes no work meanwhile."""
    async def fence_and_read() -> dict[int, bytes] | None:
        try:
            await store.fence(shard)
            newest = await store.last_seq(shard)
            if newest < seq:
                raise log_short(shard, newest, seq)
            found = {s: data async for s, data in store.entries_after(shard, seq)}
            # Asked after the read: what it found is then this instance's own. Replaced, it may be
            # a newer instance's — which recovered whatever of ours had landed.
            return found if await store.still_owner(shard) else None
        except Fenced:
            return None  # replaced: the newer instance recovered whatever of ours had landed

    found = await retry_until_done(fence_and_read, STORAGE_ERRORS, SETTLE_RETRY, _waiting_noted(shard))
    if found is None:
        return None
    landed: list[tuple[int, LogEntry]] = []
    for entry_seq, entry, data in doubt:
        there = found.pop(entry_seq, None)
        if there is None:
            store.metrics.settles.labels("not_landed").inc()
            break  # never landed, nor can it now; nor anything after it (a log has no holes)
        if there != data:
            raise LogDiverged(f"shard {shard}: entry {entry_seq} in the log is not the one this shard sent")
        store.metrics.settles.labels("landed").inc()
        landed.append((entry_seq, entry))
    if found:
        raise LogDiverged(f"shard {shard}: the log holds entries {sorted(found)} this shard never sent")
    return landed


def _waiting_noted(shard: int) -> Callable[[BaseException, float], None]:
    """What tells the operator that a settle is waiting, and on what. The shard takes no work until
    it is done, and its own retries say nothing else: without this line a shard whose Redis slot is
    left half-migrated (every script there refused ``TRYAGAIN``) answers ``UNAVAILABLE`` for as
    long as that lasts with no word of why after the append's first failure."""
    def note(exc: BaseException, wait_s: float) -> None:
        log.warning("shard %d: appends in doubt not settled yet: %s; trying again in %.2fs", shard, exc, wait_s,
                    extra={"event": "settle_waiting", "shard": shard, "error": str(exc),
                           "retry_s": round(wait_s, 2)})

    return noted_now_and_then(note, SETTLE_LOG_EVERY_S)


class Checkpoints:
    """When one shard snapshots, and the fenced write of a snapshot with backoff after failures."""

    def __init__(self, shard: int, store: LogStore, policy: SnapshotPolicy, seq: int,
                 on_diverged: Callable[[LogDiverged], None] | None = None) -> None:
        self._shard, self._store, self._policy = shard, store, policy
        self._on_diverged = on_diverged  # a snapshot found the log short: the shard must stop (R7)
        self._seq = seq  # the entry the last snapshot covers
        self._at = time.monotonic()
        # Every wait at most the configured maximum, the first too (a maximum below 1 s: retried sooner).
        retry_max_s = policy.snapshot_retry_max_s
        self._backoff = Backoff(BackoffPolicy(min(SNAPSHOT_RETRY_FIRST_S, retry_max_s), retry_max_s))
        self._retry_at = 0.0  # monotonic time before which a failed snapshot is not retried
        self._fence_first = False  # a snapshot write failed: it may still land later
        self._writing: asyncio.Task[None] | None = None  # the write of the last snapshot taken
        self.unreachable = False
        """The last write failed for Redis not answering (no connection, a timeout), not a refusal."""

    def due(self, seq: int, force: bool = False) -> bool:
        entries = seq - self._seq
        if not entries:  # nothing logged since the last snapshot (an idle shard, every pass): never due
            return False
        policy = self._policy
        if not force and entries < policy.snapshot_every_entries and \
                time.monotonic() - self._at < policy.snapshot_interval_s:
            return False
        writing = self._writing
        if writing is not None and not writing.done():
            return False  # one at a time; a stop waits for it first (``settled``)
        if force:
            return True
        # Another shard's snapshot on its way to Redis: this one waits for a later maintenance pass.
        # Backing off after a failure: each try costs time in proportion to the state.
        return not self._store.snapshots_in_flight and time.monotonic() >= self._retry_at

    async def save(self, seq: int, ledger: Ledger, wait: bool = False) -> None:
        """Snapshot ``ledger`` (memory == the log up to ``seq``) and trim the log behind it. The
        snapshot is taken and encoded now, in the shard's turn — that is the consistent cut — and
        written by a task of its own while the shard goes on (``wait``: before returning, as a stop
        does): entries logged meanwhile come after ``seq`` and stay in the log. A write refused or
        lost is retried later, fenced first (``_fence_first``)."""
        started = time.perf_counter()
        try:
            if self._fence_first:  # an older snapshot write may still land: make it unable to
                await self._store.fence(self._shard)
                self._fence_first = False
        except STORAGE_ERRORS as exc:
            self._failed(exc)
            return
        data = encode_snapshot(seq, ledger.snapshot())
        self._store.snapshots_in_flight += 1
        self._writing = asyncio.ensure_future(self._write(seq, data, started))
        if wait:
            await self.settled()

    async def settled(self) -> None:
        """Wait for the snapshot write in progress, if any (its failure is already handled)."""
        if self._writing is not None:
            await asyncio.shield(self._writing)

    async def _write(self, seq: int, data: bytes, started: float) -> None:
        try:
            policy = self._policy
            size = await self._store.write_snapshot(self._shard, seq, data,
                                                    len(data) / (policy.snapshot_write_mb_per_s * 1e6),
                                                    policy.snapshot_part_bytes, policy.snapshot_piece_bytes)
        except STORAGE_ERRORS as exc:
            self._failed(exc)
            if str(exc).startswith("GAP") and self._on_diverged is not None:
                # Redis lost entries this memory holds (the snapshot script found its log ending
                # before ``seq``): the shard must not go on serving state Redis no longer has.
                self._on_diverged(LogDiverged(f"shard {self._shard}: {exc}: Redis lost acknowledged entries"))
            return
        finally:
            self._store.snapshots_in_flight -= 1
        self._backoff.reset()
        self._retry_at = 0.0
        self.unreachable = False
        self._seq, self._at = seq, time.monotonic()
        self._store.metrics.snapshot_seconds.observe(time.perf_counter() - started)
        self._store.metrics.snapshot_bytes.labels(str(self._shard)).set(size)

    def _failed(self, exc: BaseException) -> None:
        self._fence_first = not isinstance(exc, Fenced)
        self.unreachable = isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | asyncio.TimeoutError)
        wait = self._backoff.next_delay()
        self._retry_at = time.monotonic() + wait
        self._store.metrics.snapshot_failures.inc()
        log.warning("shard %d: snapshot failed (%s); next try in %.1fs", self._shard, exc, wait)
