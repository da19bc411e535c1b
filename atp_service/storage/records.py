"""What the log stores and refuses: snapshot records, entries waiting for a group commit, and the
log's own errors (``log.py`` re-exports them)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

import msgspec
from redis.exceptions import RedisError

from reservation import LedgerSnapshot


class SnapshotRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A shard's snapshot as stored: msgpack arrays, fields by position. Each stored struct forbids
    elements past its last field: a newer build's field added at the end is refused
    (``SnapshotUnreadable``), never dropped by a prefix read and served without it."""

    seq: int
    ledger: LedgerSnapshot


def encode_snapshot(seq: int, ledger: LedgerSnapshot) -> bytes:
    """The stored form of a snapshot covering the log up to ``seq``."""
    return _encoder.encode(SnapshotRecord(seq, ledger))


class SnapshotUnreadable(RuntimeError):
    """A shard's snapshot cannot be decoded by this version: recovery stops rather than guess."""


class Fenced(RedisError):
    """This instance no longer owns a group of the keyspace (a newer one claimed it); nothing of
    the refused write was applied."""

    @property
    def claim_lost(self) -> bool:
        """Whether the refusal found the owner key below the refused epoch, or gone: no newer claim
        exists (owner keys only ever rise), so Redis lost this one's — it restarted from older data,
        or failed over to a replica that missed the claim (R7). The refusal reads ``FENCED epoch <e>
        ... was replaced by <owner>``."""
        said = _REFUSAL.match(str(self))
        return said is not None and (not said["by"].isdigit() or int(said["by"]) < int(said["epoch"]))


def wall_ms() -> int:
    """This process's wall clock in ms: a floor for the epoch it claims besides Redis's own clock
    (``scripts.DRAW_LUA``): Redis back from older data forgot the latest claims, not the time."""
    return int(time.time() * 1000)


class CrossGroupWrite(ValueError):
    """Entries of several groups submitted to land all or none where Redis cannot run one script
    across them (a cluster: their keys are in different slots)."""


log = logging.getLogger(__name__)
_encoder = msgspec.msgpack.Encoder()
_REFUSAL = re.compile(r"FENCED epoch (?P<epoch>\d+)\b.* was replaced by (?P<by>\S+)$")


class Pending(msgspec.Struct, eq=False):
    """One entry waiting for the next group commit; the entries of a group share ``done``. It
    carries the epoch and fence of its shard's owner *when it was submitted*: should the group
    change hands before it is sent, it is refused whole, even if this process owns the group again.
    A struct: built in C, one per entry (``eq=False``: compared and hashed by identity)."""

    shard: int
    seq: int
    data: bytes
    epoch: int
    token: int
    group: int
    done: asyncio.Future[None]
    then: Callable[[], None] | None = None

    def settle(self, error: BaseException | None) -> None:
        """Answer this entry (``resolve``), then call ``then`` at once (``notify``)."""
        if self.resolve(error):
            self.notify()

    def resolve(self, error: BaseException | None) -> bool:
        """Answer this entry, unless cancelled or a group's future failed by an earlier member
        already (False: nothing to notify). Whoever cancels ``done`` does its own ``then``'s work."""
        done = self.done
        if done.done():
            return False
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)  # a group's members are written or refused together
        return True

    def notify(self) -> None:
        """Call ``then`` at once, where a done callback would wait a turn of the loop (a unary
        call's reply waits on it)."""
        if self.then is not None:
            try:
                self.then()
            except Exception:  # as the loop does with a callback's: the other entries are still answered
                log.exception("a log entry's completion failed")
