"""What the log stores and refuses: snapshot records, entries waiting for a group commit, and the
log's own errors (``log.py`` re-exports them)."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
import zlib
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
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


SNAPSHOT_MAGIC = b"\xc1ATP"
"""Opens every snapshot this version stores. 0xc1 is the one byte msgpack never uses, so a snapshot
of the earlier format (the msgpack record alone: an array, 0x92) never starts with it."""
SNAPSHOT_FORMAT = 1
_HEADER = struct.Struct("<4sBI")  # SNAPSHOT_MAGIC, SNAPSHOT_FORMAT, the CRC-32 of the body after it
SNAPSHOT_HEADER_BYTES = _HEADER.size
T = TypeVar("T")
Ts = TypeVarTuple("Ts")
CHECKSUM_INLINE_BYTES = 1 << 20
"""A snapshot past this size has its checksum computed in a thread (zlib releases the GIL): ~60 ms
for a shard of ~2 M positions (136 MB) that every other shard would otherwise wait out."""


async def checksummed(fn: Callable[[bytes, *Ts], T], data: bytes, *args: *Ts) -> T:
    """``fn(data, *args)`` (a snapshot's checksum made or checked), in a thread past
    ``CHECKSUM_INLINE_BYTES``: not in the event loop's turn, where every shard would wait for it."""
    if len(data) > CHECKSUM_INLINE_BYTES:
        return await asyncio.to_thread(fn, data, *args)
    return fn(data, *args)


def snapshot_header(body: bytes) -> bytes:
    """What precedes ``body`` (``encode_snapshot``) where it is stored: the checksum of all of it,
    however many parts carry it to Redis, checked at every read (``opened_snapshot``; R7, E10)."""
    return _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_FORMAT, zlib.crc32(body))


def sealed_snapshot(body: bytes) -> bytes:
    """``body`` as stored: its header, then itself."""
    return snapshot_header(body) + body


def opened_snapshot(raw: bytes, shard: int, key: str) -> bytes | memoryview:
    """The body of ``raw`` (shard ``shard``'s snapshot, read from ``key``) once its checksum matches.
    The log is trimmed behind a snapshot, so a snapshot whose bytes changed in Redis (a bad disk, a
    damaged backup, an edit) would be served as stock with nothing to correct it: refused instead."""
    if not raw.startswith(SNAPSHOT_MAGIC[:1]):
        return raw  # written before the header (a rolling upgrade): no checksum to check
    where = f"shard {shard}: the snapshot at {key}"
    if len(raw) < _HEADER.size:
        raise SnapshotUnreadable(f"{where} is cut short: {len(raw)} bytes, less than its "
                                 f"{_HEADER.size}-byte header; restore Redis from a backup")
    magic, version, stored = _HEADER.unpack_from(raw)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotUnreadable(f"{where} does not start with {SNAPSHOT_MAGIC!r} (it has {magic!r}); "
                                 "restore Redis from a backup")
    if version != SNAPSHOT_FORMAT:
        raise SnapshotUnreadable(f"{where} is in snapshot format {version}, this version reads "
                                 f"{SNAPSHOT_FORMAT}; start the version that wrote it")
    body = memoryview(raw)[_HEADER.size:]
    computed = zlib.crc32(body)
    if computed != stored:
        raise SnapshotUnreadable(f"{where} fails its checksum (CRC-32 {computed:#010x} of its "
                                 f"{len(body)} bytes, {stored:#010x} stored): its bytes changed after they "
                                 "were written; see 'A snapshot fails its checksum' in docs/OPERATIONS.md")
    return body


class SnapshotUnreadable(RuntimeError):
    """A shard's snapshot cannot be decoded by this version, or fails its checksum: recovery stops
    rather than guess (a start: exit status 2)."""


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
        return said is not None and number_of(said["by"]) < int(said["epoch"])


UNCLAIMED = "0"
"""The epoch of a group not claimed: no owner key holds it, so every write script refuses it."""


def claimed(number: int, identity: str) -> str:
    """The epoch of a claim, as its owner key holds it and every write carries it: the number drawn
    (``scripts.DRAW_LUA``) and the claim's own identity (``scripts.CLAIM_ORDER_LUA``). Redis back from
    older data may draw a forgotten claim's number again; the identity keeps the two claims apart, so
    the forgotten claim's instance, still running, is refused at its next write (R7, E10)."""
    return f"{number}:{identity}"


def number_of(epoch: str | bytes | None) -> int:
    """The number drawn for ``epoch`` (an owner key's value; a previous release's holds the number
    alone); 0 for none (a missing key, or a refusal's ``false``)."""
    text = epoch.decode(errors="replace") if isinstance(epoch, bytes) else (epoch or "")
    digits = _NUMBER.match(text)
    return int(digits[0]) if digits else 0


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
_NUMBER = re.compile(r"\d+")


class Pending(msgspec.Struct, eq=False):
    """One entry waiting for the next group commit; the entries of a group share ``done``. It
    carries the epoch and fence of its shard's owner *when it was submitted*: should the group
    change hands before it is sent, it is refused whole, even if this process owns the group again.
    A struct: built in C, one per entry (``eq=False``: compared and hashed by identity)."""

    shard: int
    seq: int
    data: bytes
    epoch: str
    token: int
    group: int
    done: asyncio.Future[None]
    then: Callable[[], None] | None = None

    def settle(self, error: BaseException | None) -> None:
        """Answer this entry (``resolve``), then call ``then`` at once (``notify``): both written out,
        a one-entry commit's answer (``solo.py``)."""
        done = self.done
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(None)
        then = self.then
        if then is not None:
            try:
                then()
            except Exception:  # as the loop does with a callback's: the other entries are still answered
                log.exception("a log entry's completion failed")

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


def abandoned_write() -> RedisConnectionError:
    """What an entry of a commit abandoned (its task cancelled: the service stopping) is answered: in doubt (R7)."""
    return RedisConnectionError("the write was abandoned: the service is stopping")


def unreadable_reply(exc: Exception) -> RedisError:
    """The failure of an entry whose append's reply could not be read (a shape no append returns):
    whether it landed is unknown, so a plain ``RedisError``: in doubt, settled by fence and read (R7)."""
    return RedisError(f"the reply to a log append could not be read: {exc!r}")
