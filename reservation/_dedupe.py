"""E8: which fact identities were applied, and with what payload, for at least the grace window.

An identity is remembered as a 128-bit digest of ``(source, event_id, sku, location)`` (BLAKE2b):
fixed size whatever the ids' lengths. Two distinct identities share a digest with probability
about n²/2¹²⁹ — for a billion remembered facts, below 10⁻²⁰ — and even then the second is only
taken for the first if its payload is equal too; otherwise it is quarantined as a conflict,
visibly, never applied twice.

Beside it, its payload (``_keys.pack_payload``): the event time, exactly, and the rest of the
payload in 64 bits — exactly too (kind and quantity) for a fact that names no reservation. For one
that does (a SHIPMENT), the rest is a 63-bit BLAKE2b digest of its kind, quantity and reservation
id: a conflicting resend of such a fact (same identity and event time, another kind, quantity or
reservation) is taken for a duplicate with probability 2⁻⁶³ (about 10⁻¹⁹) per resend, instead of
being quarantined.

New identities go into an open map (digest -> payload as one int, ~145 bytes an identity); between
batches, once it holds ``SEAL_AT`` of them (or an eighth of the sealed rows, if more), it is sealed
into four numpy columns sorted by digest — the digest's high and low halves, the event time and the
rest of the payload: 32 bytes an identity, searched by bisection of the high halves. Sealing
rewrites the columns (a linear merge: ~0.2 s for 2 M rows, in the shard's turn — the stall a shard
pays for a very large dedupe window). Forgetting (stream time minus grace passed an identity's event
time) compresses the columns and drops the open map's identities stamped before the horizon too, at most
once each time the horizon moves a sixteenth of the grace, so memory stays within about 17/16 of a grace
window of facts.

A position's latest count is remembered by its columns in the store (its source and event_id are
there anyway, for E1), so it needs no entry here: a re-sent baseline costs no memory. A count that a
newer one supersedes is remembered here from then on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator

import msgspec
import numpy as np
import numpy.typing as npt

from ._keys import _SEP, Payload, pack_payload
from ._model import FactKind
from ._segments import raw
from ._store import LatestCount, PositionStore

_COUNT = int(FactKind.COUNT)
Digest = bytes
"""16 bytes: BLAKE2b of the identity."""
SEAL_AT = 16_384
"""Identities the open map holds before it is sealed into the columns (~145 bytes each while open:
2.4 MB a shard at most; a seal merges them into the columns in one linear pass)."""
_LOW = (1 << 64) - 1  # a payload's rest; its event time is above it (``_keys.pack_payload``)
_NEVER = np.iinfo(np.int64).max
_NO_PAYLOAD = (_NEVER + 1) << 64
"""Above every payload (``_keys.pack_payload``: an int64 event time above 64 bits): the least of an empty open map."""
Columns = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64], npt.NDArray[np.uint64]]
"""The sealed identities, sorted by digest: its high halves, low halves, event times, payload rests."""


def digest(source: str, event_id: str, sku: str, location: str) -> Digest:
    """E8's identity of a fact, as 16 bytes."""
    return hashlib.blake2b(f"{source}{_SEP}{event_id}{_SEP}{sku}{_SEP}{location}".encode(), digest_size=16).digest()


class MemorySnapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The sealed columns, and the open map as columns of its own, in arrival order. A snapshot in the
    earlier layout (rows of digest halves and a 25-byte payload, the open map as two lists) does not
    decode as this one: recovery refuses it (``SnapshotUnreadable``) rather than misread it."""

    his: memoryview  # uint64 per sealed identity, sorted: its digest's high half
    los: memoryview  # uint64: the digest's low half
    times: memoryview  # int64: its event time
    rests: memoryview  # uint64: the rest of its payload (``_keys.pack_payload``)
    open_keys: memoryview  # the open map's digests, 16 bytes each
    open_times: memoryview  # int64
    open_rests: memoryview  # uint64


def _empty() -> Columns:
    u8 = np.uint64
    return np.zeros(0, dtype=u8), np.zeros(0, dtype=u8), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=u8)


class FactMemory:
    """Remembered identities: sealed columns plus the open map."""

    __slots__ = ("_his", "_least_open", "_los", "_next_forget_at", "_oldest", "_rests", "_times", "open", "store")

    def __init__(self, store: PositionStore) -> None:
        self.store = store
        self.open: dict[Digest, Payload] = {}
        """Identities remembered since the last seal, in arrival order (undo takes them back)."""
        self._least_open = _NO_PAYLOAD
        """No payload in the open map is below it (its event time first: forgetting looks there when it is old)."""
        self._next_forget_at = -_NEVER
        self._set_columns(_empty())

    def __len__(self) -> int:
        return len(self.open) + len(self._his)

    def payload(self, key: Digest, source: str, event_id: str, sku: str, location: str) -> Payload | None:
        """The payload applied under this identity at this position (None: never applied)."""
        seen = self.open.get(key)
        if seen is not None:
            return seen
        if len(self._his):
            seen = self._sealed(key)
            if seen is not None:
                return seen
        count = self.store.latest_count(sku, location)
        if count is not None and count[1] == source and count[2] == event_id:
            return pack_payload(count[0], _COUNT, count[3], "")
        return None

    def remember(self, key: Digest, payload: Payload) -> None:
        self.open[key] = payload
        if payload < self._least_open:
            self._least_open = payload

    def remember_superseded(self, sku: str, location: str, count: LatestCount) -> Digest:
        """A count no longer the latest keeps its identity here (E8 still covers it); returns its key."""
        at, source, event_id, quantity = count
        key = digest(source, event_id, sku, location)
        self.remember(key, pack_payload(at, _COUNT, quantity, ""))
        return key

    def drop(self, key: Digest) -> None:
        """Undo of ``remember`` (its batch failed): the open map holds it, as nothing is sealed while
        a batch is open or in flight."""
        self.open.pop(key, None)

    def has_old(self, horizon: int) -> bool:
        """Whether ``forget_old`` would do anything now: seal the open map or forget identities, sealed or not."""
        return self._seal_due() or (horizon >= self._next_forget_at and self._stamped_before(horizon))

    def _stamped_before(self, horizon: int) -> bool:
        """Whether a sealed identity is stamped before ``horizon``, or one of the open map may be."""
        return self._oldest < horizon or self._least_open < horizon << 64

    def _seal_due(self) -> bool:
        # Sealing rewrites the sealed rows: at an eighth of them at least, each row is rewritten a
        # bounded number of times whatever the size (amortised), not once per SEAL_AT arrivals.
        return len(self.open) >= max(SEAL_AT, len(self._his) // 8)

    def forget_old(self, horizon: int, every: int) -> int:
        """Between batches, nothing in flight: seal a full open map, and drop identities stamped before
        ``horizon`` (a duplicate of one would be late, E6, and quarantined, never applied), sealed or
        not — at most once each time the horizon moves ``every`` ms. Returns the identities dropped."""
        if self._seal_due():
            self._seal()
        if horizon < self._next_forget_at or not self._stamped_before(horizon):
            return 0
        self._next_forget_at = horizon + every
        gone = self._forget_open(horizon)
        if self._oldest < horizon:
            keep = self._times >= horizon
            gone += len(keep) - int(np.count_nonzero(keep))
            self._set_columns((self._his[keep], self._los[keep], self._times[keep], self._rests[keep]))
        return gone

    def _forget_open(self, horizon: int) -> int:
        """The open map's identities stamped before ``horizon`` dropped (E8: remembered for the grace window
        plus at most a sixteenth of it). Kept until a seal, a shard that never gathers ``SEAL_AT`` of them
        forgot none: below that ``max_dedupe_entries_per_shard`` filled with facts long past the window, and
        every new fact after was quarantined for want of room, for good (stream time moves only with facts
        applied). Looked through only where one may be old (``_least_open``): ~0.2 s for 2 M, the most the open
        map holds at the default bound, as a seal of as many costs."""
        opened, floor = self.open, horizon << 64  # a payload is its event time above 64 bits (``pack_payload``)
        if self._least_open >= floor:
            return 0
        self.open = {key: payload for key, payload in opened.items() if payload >= floor}  # arrival order kept
        self._least_open = min(self.open.values(), default=_NO_PAYLOAD)
        return len(opened) - len(self.open)

    def snapshot(self) -> MemorySnapshot:
        keys, times, rests = self._open_columns()
        return MemorySnapshot(raw(self._his), raw(self._los), raw(self._times), raw(self._rests), memoryview(keys),
                              raw(times), raw(rests))

    @classmethod
    def restoring(cls, store: PositionStore, snap: MemorySnapshot,
                  slice_size: int) -> Generator[None, None, FactMemory]:
        """``restore``, the open map ``slice_size`` identities at a time, yielding between slices: it holds up
        to an eighth of the sealed rows (2 M at the default bound, ~0.5 µs each), built in one go for as long
        as a process serving other groups answered no call and renewed no lease (``_restore``)."""
        memory = cls(store)
        memory._set_columns((np.frombuffer(snap.his, dtype=np.uint64).copy(),
                             np.frombuffer(snap.los, dtype=np.uint64).copy(),
                             np.frombuffer(snap.times, dtype=np.int64).copy(),
                             np.frombuffer(snap.rests, dtype=np.uint64).copy()))
        keys = bytes(snap.open_keys)
        times, rests = np.frombuffer(snap.open_times, dtype=np.int64), np.frombuffer(snap.open_rests, dtype=np.uint64)
        if len(keys) != 16 * len(times) or len(rests) != len(times):
            raise ValueError(f"{len(keys)} bytes of keys for {len(times)} times and {len(rests)} rests")
        opened = memory.open
        for at in range(0, len(times), slice_size):
            if at:
                yield
            end = min(at + slice_size, len(times))
            payloads = (times[at:end].astype(object) << 64 | rests[at:end].astype(object)).tolist()
            opened.update(zip([keys[i:i + 16] for i in range(16 * at, 16 * end, 16)], payloads, strict=True))
            memory._least_open = min(memory._least_open, min(payloads, default=_NO_PAYLOAD))
        return memory

    def _set_columns(self, columns: Columns) -> None:
        self._his, self._los, self._times, self._rests = columns
        self._oldest = int(self._times.min()) if len(self._times) else _NEVER  # the oldest sealed event time

    def holds(self, keys: list[Digest]) -> npt.NDArray[np.bool_]:
        """Whether each identity is remembered here, open or sealed (one search for them all; a
        position's latest count, known by its columns, is not looked at)."""
        held = np.fromiter((k in self.open for k in keys), dtype=np.bool_, count=len(keys))
        his = self._his
        if not len(his) or not keys:
            return held
        halves = np.frombuffer(b"".join(keys), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        first = his.searchsorted(halves[:, 0])
        last = his.searchsorted(halves[:, 0], side="right")
        for i in np.flatnonzero(last > first).tolist():  # a high half in common: rare but for the key itself
            held[i] |= bool((self._los[first[i]:last[i]] == halves[i, 1]).any())
        return held

    def _sealed(self, key: Digest) -> Payload | None:
        hi, lo = int.from_bytes(key[:8]), int.from_bytes(key[8:])
        his = self._his
        i = int(his.searchsorted(np.uint64(hi)))  # exact: a Python int past 2**63 could go via float
        while i < len(his) and int(his[i]) == hi:
            if int(self._los[i]) == lo:
                return int(self._times[i]) << 64 | int(self._rests[i])
            i += 1
        return None

    def _open_columns(self) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
        """The open map in arrival order: its digests (16 bytes each), event times and payload rests."""
        payloads = np.fromiter(self.open.values(), dtype=object, count=len(self.open))
        return b"".join(self.open), (payloads >> 64).astype(np.int64), (payloads & _LOW).astype(np.uint64)

    def _seal(self) -> None:
        """The open map into the sorted columns: the two sorted runs merge in linear time (timsort)."""
        keys, times, rests = self._open_columns()
        digests = np.frombuffer(keys, dtype=">u8").reshape(-1, 2)
        his, los = digests[:, 0].astype(np.uint64), digests[:, 1].astype(np.uint64)
        order = np.lexsort((los, his))
        self._set_columns(_merge((self._his, self._los, self._times, self._rests),
                                 (his[order], los[order], times[order], rests[order])))
        self.open, self._least_open = {}, _NO_PAYLOAD


def _merge(old: Columns, new: Columns) -> Columns:
    """Two runs of columns, each sorted by its high halves, as one (equal halves: old first)."""
    merged = np.argsort(np.concatenate([old[0], new[0]]), kind="stable")
    his, los, times, rests = (np.concatenate([o, n])[merged] for o, n in zip(old, new, strict=True))
    return his, los, times, rests
