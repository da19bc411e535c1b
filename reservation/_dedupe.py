"""E8: which fact identities were applied, and with what payload, for at least the grace window.

An identity is remembered as a 128-bit digest of ``(source, event_id, sku, location)`` (BLAKE2b):
fixed size whatever the ids' lengths. Two distinct identities share a digest with probability
about n²/2¹²⁹ — for a billion remembered facts, below 10⁻²⁰ — and even then the second is only
taken for the first if its payload is equal too; otherwise it is quarantined as a conflict,
visibly, never applied twice.

New identities go into an open map (digest -> payload bytes); between batches, once it holds
``SEAL_AT`` of them (or an eighth of the sealed rows, if more), it is sealed into the columns:
numpy arrays sorted by digest, 57 bytes an identity, searched by bisection. Sealing rewrites the
columns (a linear merge: ~0.25 s for 2 M rows, in the shard's turn — the stall a shard pays for
a very large dedupe window). Forgetting (stream time minus grace passed an identity's event time)
compresses the columns, at most once each time the horizon moves a sixteenth of the grace, so
memory stays within about 17/16 of a grace window of facts plus the open map.

A position's latest count is remembered by its columns in the store (its source and event_id are
there anyway, for E1), so it needs no entry here: a re-sent baseline costs no memory. A count that a
newer one supersedes is remembered here from then on.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import numpy.typing as npt

from ._keys import _SEP, PAYLOAD_SIZE, Payload, pack_payload
from ._model import FactKind
from ._store import LatestCount, PositionStore, raw

_COUNT = int(FactKind.COUNT)
Digest = bytes
"""16 bytes: BLAKE2b of the identity."""
SEAL_AT = 16_384
"""Identities the open map holds before it is sealed into the columns (~150 bytes each while open:
2.4 MB a shard at most; a seal merges them into the columns in one linear pass)."""
_ROW = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("payload", f"V{PAYLOAD_SIZE}")])  # digest halves as numbers
_PAYLOAD_TIME = np.dtype([("time", ">i8"), ("rest", f"V{PAYLOAD_SIZE - 8}")])
_NEVER = np.iinfo(np.int64).max


def digest(source: str, event_id: str, sku: str, location: str) -> Digest:
    """E8's identity of a fact, as 16 bytes."""
    return hashlib.blake2b(f"{source}{_SEP}{event_id}{_SEP}{sku}{_SEP}{location}".encode(), digest_size=16).digest()


def _contiguous_his(rows: npt.NDArray[np.void]) -> npt.NDArray[np.uint64]:
    """The digests' high halves as their own array: searching the strided field of the rows would copy
    all of it on every lookup (8 bytes a row buys a bisection instead of a copy)."""
    return np.ascontiguousarray(rows["hi"])


class MemorySnapshot(msgspec.Struct, array_like=True):
    rows: memoryview  # _ROW records, sorted by digest
    times: memoryview  # int64 per row: its event time
    open_keys: list[bytes]
    open_payloads: list[bytes]


class FactMemory:
    """Remembered identities: sealed columns plus the open map."""

    __slots__ = ("_his", "_next_forget_at", "_oldest", "_rows", "_times", "open", "store")

    def __init__(self, store: PositionStore) -> None:
        self.store = store
        self.open: dict[Digest, Payload] = {}
        """Identities remembered since the last seal, in arrival order (undo takes them back)."""
        self._rows: npt.NDArray[np.void] = np.zeros(0, dtype=_ROW)
        self._times: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._his = _contiguous_his(self._rows)
        self._next_forget_at = -_NEVER
        self._oldest = _NEVER  # the oldest event time among the sealed rows

    def __len__(self) -> int:
        return len(self.open) + len(self._rows)

    def payload(self, key: Digest, source: str, event_id: str, sku: str, location: str) -> Payload | None:
        """The payload applied under this identity at this position (None: never applied)."""
        seen = self.open.get(key)
        if seen is not None:
            return seen
        if len(self._rows):
            seen = self._sealed(key)
            if seen is not None:
                return seen
        cell = self.store.locate(sku, location)
        count = None if cell is None else self.store.count_at(*cell)
        if count is not None and count[1] == source and count[2] == event_id:
            return pack_payload(count[0], _COUNT, count[3], "")
        return None

    def remember(self, key: Digest, payload: Payload) -> None:
        self.open[key] = payload

    def remember_superseded(self, sku: str, location: str, count: LatestCount) -> Digest:
        """A count no longer the latest keeps its identity here (E8 still covers it); returns its key."""
        at, source, event_id, quantity = count
        key = digest(source, event_id, sku, location)
        self.open[key] = pack_payload(at, _COUNT, quantity, "")
        return key

    def drop(self, key: Digest) -> None:
        """Undo of ``remember`` (its batch failed): the open map holds it, as nothing is sealed while
        a batch is open or in flight."""
        self.open.pop(key, None)

    def has_old(self, horizon: int) -> bool:
        """Whether ``forget_old`` would do anything now: seal the open map or forget sealed rows."""
        return self._seal_due() or (horizon >= self._next_forget_at and self._oldest < horizon)

    def _seal_due(self) -> bool:
        # Sealing rewrites the sealed rows: at an eighth of them at least, each row is rewritten a
        # bounded number of times whatever the size (amortised), not once per SEAL_AT arrivals.
        return len(self.open) >= max(SEAL_AT, len(self._rows) // 8)

    def forget_old(self, horizon: int, every: int) -> int:
        """Between batches, nothing in flight: seal a full open map, and drop sealed identities stamped
        before ``horizon`` (a duplicate of one would be late, E6, and quarantined, never applied) —
        at most once each time the horizon moves ``every`` ms. Returns the identities dropped."""
        if self._seal_due():
            self._seal()
        if horizon < self._next_forget_at or self._oldest >= horizon:
            return 0
        self._next_forget_at = horizon + every
        keep = self._times >= horizon
        gone = len(keep) - int(np.count_nonzero(keep))
        if gone:
            self._rows, self._times = self._rows[keep], self._times[keep]
            self._his = _contiguous_his(self._rows)
            self._oldest = int(self._times.min()) if len(self._times) else _NEVER
        return gone

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(raw(self._rows), raw(self._times), list(self.open), list(self.open.values()))

    @classmethod
    def restore(cls, store: PositionStore, snap: MemorySnapshot) -> FactMemory:
        memory = cls(store)
        memory._rows = np.frombuffer(snap.rows, dtype=_ROW).copy()
        memory._times = np.frombuffer(snap.times, dtype=np.int64).copy()
        memory._his = _contiguous_his(memory._rows)
        memory._oldest = int(memory._times.min()) if len(memory._times) else _NEVER
        memory.open = dict(zip(snap.open_keys, snap.open_payloads, strict=True))
        return memory

    def _sealed(self, key: Digest) -> Payload | None:
        hi, lo = int.from_bytes(key[:8]), int.from_bytes(key[8:])
        rows, his = self._rows, self._his
        i = int(his.searchsorted(np.uint64(hi)))  # exact: a Python int past 2**63 could go via float
        while i < len(rows) and int(his[i]) == hi:
            if int(rows[i]["lo"]) == lo:
                return bytes(rows[i]["payload"])
            i += 1
        return None

    def _seal(self) -> None:
        """The open map into the sorted columns: the two sorted runs merge in linear time (timsort)."""
        new = np.zeros(len(self.open), dtype=_ROW)
        digests = np.frombuffer(b"".join(self.open), dtype=">u8").reshape(-1, 2)
        new["hi"], new["lo"] = digests[:, 0], digests[:, 1]
        payloads = b"".join(self.open.values())
        new["payload"] = np.frombuffer(payloads, dtype=f"V{PAYLOAD_SIZE}")
        times = np.frombuffer(payloads, dtype=_PAYLOAD_TIME)["time"].astype(np.int64)
        order = np.lexsort((new["lo"], new["hi"]))
        rows = np.concatenate([self._rows, new[order]])
        merged = np.argsort(rows["hi"], kind="stable")
        self._rows, self._times = rows[merged], np.concatenate([self._times, times[order]])[merged]
        self._his = _contiguous_his(self._rows)
        self._oldest = min(self._oldest, int(times.min())) if len(times) else self._oldest
        self.open = {}
