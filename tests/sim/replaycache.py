"""The checks' replays of the log, kept from one check to the next.

After every step the checks recover each shard as a restart would (``World.recovered``: its snapshot, read by
the service's own code, then the log after it) and compare memory with it (E10, ``replay.py``), the durable
state with itself (Q2/Q3) and the channels with it (C4). A step mostly leaves a shard's snapshot as it was and
its log as it was or longer, and replaying all of it again, from the snapshot's restore on, was a sixth of a
seed's time. So each shard's replay is kept with what it was made from — the limits, the bytes the snapshot
was decoded from (``SnapshotReads.read``: a snapshot is a function of them), the log's entries — and the next
call compares those first:

- all the same: the same ledger and seq;
- the same limits and snapshot, and entries that begin with the kept ones: the kept ledger goes on over the
  entries past them, exactly as the one loop of a fresh replay (``replay_entries``) would have gone on;
- anything else (another snapshot, a log trimmed, cut short, restored from older data or otherwise not an
  extension, an instance with other limits): a fresh replay, kept in its place.

What is compared is what the replay reads, by value, so whatever changed them (a write, a trim, a crash's late
landings, a lost tail) makes a kept replay go. The snapshot is read every time, as before. Nothing changes a
kept ledger but ``replay_entries``: the checks only read what they are given (``World.boot`` replays its own,
which its shards then change). ``SIM_CACHE_CHECK=1`` checks that at every use: each kept replay served is
compared with a fresh one, attribute by attribute (``differs``), and an ``AssertionError`` names the first
difference.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

import msgspec
import numpy as np

from atp_service.storage.records import SnapshotRecord
from reservation import Ledger, Limits, decode_entry
from reservation._segments import Segments

CHECK_ENV = "SIM_CACHE_CHECK"
"""Set to 1: each kept replay served is checked against a fresh one (``ReplayCache.check``), and so is each
answer of the history's facts read once (``historyfacts.py``) and the stamps checker's (``stamps.py``)."""
CHECK = os.environ.get(CHECK_ENV) == "1"
"""Read where it is used (``replaycache.CHECK``): a test sets it for a few seeds (``test_replay_cache.py``)."""

Entries = list[tuple[int, bytes]]


def fresh_replay(shard: int, limits: Limits, snap: SnapshotRecord | None, entries: Entries) -> tuple[Ledger, int]:
    """A shard as a start-up recovers it: the snapshot's state (none: empty), then the entries past it."""
    ledger = Ledger.restore(shard, limits, snap.ledger) if snap else Ledger(shard, limits)
    return ledger, replay_entries(ledger, snap.seq if snap else 0, entries)


def replay_entries(ledger: Ledger, seq: int, entries: Entries) -> int:
    """``ledger``, at entry ``seq``, replays those of ``entries`` past it in order; the seq it ends at."""
    for entry_seq, data in entries:
        if entry_seq > seq:
            ledger.replay(decode_entry(data))
            seq = entry_seq
    return seq


class _Kept:
    __slots__ = ("entries", "ledger", "limits", "raw", "seq")

    def __init__(self, limits: Limits, raw: Any, entries: Entries, ledger: Ledger, seq: int) -> None:
        self.limits, self.raw, self.entries, self.ledger, self.seq = limits, raw, entries, ledger, seq


class ReplayCache:
    """Each shard's replay for the checks, kept while what it was made from holds (see the module)."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self._limits = limits  # the running instance's (``World.config``): a restart may change them
        self._kept: dict[int, _Kept] = {}
        self.check = CHECK  # a world's, from its start
        self.served = {"fresh": 0, "same": 0, "carried": 0}
        """How each replay was served (a fresh one, the kept one as it was, the kept one carried on)."""

    def replay(self, shard: int, raw: Any, snap: SnapshotRecord | None, entries: Entries) -> tuple[Ledger, int]:
        """The shard replayed from ``snap``, decoded from the bytes ``raw`` (None or empty: no snapshot), and
        ``entries`` (kept: a copy of the log's). The ledger may be served again: read it, never change it."""
        limits = self._limits()
        kept = self._kept.get(shard)
        if kept is not None:
            done = len(kept.entries)
            if (len(entries) >= done and kept.limits == limits and kept.raw == raw
                    and entries[:done] == kept.entries):
                if len(entries) > done:
                    try:
                        kept.seq = replay_entries(kept.ledger, kept.seq, entries[done:])
                    except BaseException:
                        del self._kept[shard]  # replayed in part: a fresh replay at the next call
                        raise
                    self.served["carried"] += 1
                else:
                    self.served["same"] += 1
                kept.entries = entries
                if self.check:
                    self.compare(shard, limits, snap, entries, kept)
                return kept.ledger, kept.seq
        self.served["fresh"] += 1
        ledger, seq = fresh_replay(shard, limits, snap, entries)
        self._kept[shard] = _Kept(limits, raw, entries, ledger, seq)
        return ledger, seq

    @staticmethod
    def compare(shard: int, limits: Limits, snap: SnapshotRecord | None, entries: Entries, kept: _Kept) -> None:
        """``SIM_CACHE_CHECK``: the kept replay is a fresh one's, in every attribute."""
        fresh, seq = fresh_replay(shard, limits, snap, entries)
        if seq != kept.seq:
            raise AssertionError(f"replay cache: shard {shard} kept at entry {kept.seq}, a fresh replay at {seq}")
        if (where := differs(kept.ledger, fresh, "ledger")) is not None:
            raise AssertionError(f"replay cache: shard {shard}'s kept replay differs from a fresh one at {where}")


_PLAIN = (type(None), bool, int, float, str, bytes, Enum)
_MEMO = frozenset({"_hit_row", "_hit_col", "_hit_slot"})
"""``Segments.find``'s one-position cache: a read sets it. Not compared; each side's checked to say what a
search says (``_memo_true``), so that either answers every look-up alike."""
_DRAWN = frozenset({"columns_version"})
"""``PositionStore.columns_version``: drawn from a counter of the process for every layout made (a cache's key,
``Curator._columns``), so two stores of one layout hold different draws. Not compared."""


def differs(a: Any, b: Any, path: str, seen: set[tuple[int, int]] | None = None) -> str | None:
    """Where two object graphs differ (None: nowhere): types, then values of plain ones, arrays by dtype,
    shape and content, dicts by keys in order and values, sequences item by item, other objects by every
    attribute (``__dict__`` and ``__slots__``)."""
    seen = set() if seen is None else seen
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} / {type(b).__name__}"
    if a is b:
        return None
    if isinstance(a, _PLAIN):
        return None if a == b else f"{path}: {a!r} / {b!r}"
    pair = (id(a), id(b))
    if pair in seen:
        return None
    seen.add(pair)
    if isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        return None if same else f"{path}: arrays differ"
    if isinstance(a, memoryview):
        same = a.format == b.format and a.shape == b.shape and a.tobytes() == b.tobytes()
        return None if same else f"{path}: memoryviews differ"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{path}: keys {list(a)[:5]}... / {list(b)[:5]}..."
        for key in a:
            if (where := differs(a[key], b[key], f"{path}[{key!r}]", seen)) is not None:
                return where
        return None
    if isinstance(a, (list, tuple, deque)):
        if len(a) != len(b):
            return f"{path}: {len(a)} / {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if (where := differs(x, y, f"{path}[{i}]", seen)) is not None:
                return where
        return None
    if isinstance(a, (set, frozenset)):
        return None if a == b else f"{path}: {sorted(a ^ b, key=repr)[:5]} in one only"
    if isinstance(a, msgspec.Struct):
        names: list[str] = list(a.__struct_fields__)
    else:
        names = list(getattr(a, "__dict__", {}))
        names += [slot for cls in type(a).__mro__ for slot in cls.__dict__.get("__slots__", ())
                  if slot not in names and hasattr(a, slot)]
        if not names:
            raise TypeError(f"{path}: cannot compare a {type(a).__name__}")
    if isinstance(a, Segments):
        for side, seg in (("kept", a), ("fresh", b)):
            if not _memo_true(seg):
                return f"{path}: the {side} one's find cache answers otherwise than a search"
        names = [name for name in names if name not in _MEMO]
    for name in names:
        if name in _DRAWN:
            continue
        if (where := differs(getattr(a, name), getattr(b, name), f"{path}.{name}", seen)) is not None:
            return where
    return None


def _memo_true(seg: Segments) -> bool:
    """``Segments.find``'s cache, where it holds a position, names the slot a search finds."""
    row, col, slot = seg._hit_row, seg._hit_col, seg._hit_slot
    if row == -1:
        return True
    seg._hit_row = -1
    try:
        return seg.find(row, col) == slot
    finally:
        seg._hit_row, seg._hit_col, seg._hit_slot = row, col, slot
