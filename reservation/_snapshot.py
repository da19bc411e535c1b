"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import numpy as np

from ._columns import N_DELTAS, N_EVENT, N_SOURCE, StoreSnapshot
from ._dedupe import MemorySnapshot
from ._deltas import PoolSnapshot
from ._model import Reservation
from ._segments import NARROW, WIDE
from ._upkeep import NOTHING_FORGOTTEN

if TYPE_CHECKING:
    from ._ledger import Ledger


class LedgerSnapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A shard's state: its columns as views (encode it in the turn it is taken, see ``raw``), and
    lists of what is open."""

    store: StoreSnapshot
    reservations: list[Reservation]
    deltas: PoolSnapshot  # the kept deltas; each position's chain starts in store.ids
    seen: MemorySnapshot  # E8
    stream_time: int
    clock: int
    forgotten_before: int = NOTHING_FORGOTTEN
    """E8, E9: ``Upkeep.forgotten_before`` (none in a snapshot written before it was kept)."""


def snapshot_of(ledger: Ledger) -> LedgerSnapshot:
    """``Ledger.snapshot``: between batches, none open."""
    assert not ledger.pending, "snapshot inside an open batch"
    return LedgerSnapshot(
        store=ledger.store.snapshot(),
        reservations=list(ledger.reservations.values()),
        deltas=ledger.histories.pool.snapshot(),
        seen=ledger.memory.snapshot(),
        stream_time=ledger.stream_time,
        clock=ledger.clock,
        forgotten_before=ledger.forgotten_before,
    )


class SnapshotInconsistent(ValueError):
    """A snapshot whose columns do not fit together as this build lays them out: written by a build with
    other columns (a rollback after an upgrade), refused whole before anything of it is restored."""


def check_layout(snap: LedgerSnapshot) -> None:
    """Refuse (``SnapshotInconsistent``) a snapshot this build would restore short or crash on: its columns
    are lists and byte strings, which decoding takes at any length. A column more was an ``IndexError``
    half-way through the restore, a column fewer or a shorter table of names was served (zeros, names
    lost): E10 and R7 hold only for a snapshot restored whole."""
    store, pool, seen = snap.store, snap.deltas, snap.seen
    tail, rows = store.tail, len(store.skus)
    if len(store.wide) != WIDE or len(store.narrow) != NARROW:
        raise SnapshotInconsistent(f"{len(store.wide)} wide and {len(store.narrow)} narrow columns, this "
                                   f"version has {WIDE} and {NARROW}")
    slots, facts, opened = pool.times.nbytes // 8, seen.his.nbytes, seen.open_times.nbytes
    sizes = [("wide", view, 8 * tail) for view in store.wide] + [("narrow", view, 4 * tail) for view in store.narrow]
    sizes += [("col", store.col, 4 * tail), ("starts", store.starts, 8 * rows), ("lengths", store.lengths, 4 * rows),
              ("caps", store.caps, 4 * rows), ("delta times", pool.times, 8 * slots),
              ("delta quantities", pool.qtys, 8 * slots), ("delta sources", pool.sources, 4 * slots),
              ("delta links", pool.nexts, 4 * slots), ("open keys", seen.open_keys, 2 * opened),
              ("open rests", seen.open_rests, opened), ("digest lows", seen.los, facts),
              ("fact times", seen.times, facts), ("fact rests", seen.rests, facts)]
    for name, view, size in sizes:
        if view.nbytes != size:
            raise SnapshotInconsistent(f"its {name} hold {view.nbytes} bytes, not {size}")
    if not 0 <= store.garbage <= tail or pool.free.nbytes % 4 or facts % 8 or opened % 8:
        raise SnapshotInconsistent("its columns' sizes do not fit together")
    i32 = np.int32
    starts, lengths, caps = (np.frombuffer(store.starts, np.int64), np.frombuffer(store.lengths, i32),
                             np.frombuffer(store.caps, i32))
    names = max(len(store.names), 1)  # index 0 (no name, no delta: NONE, END) is always there
    for name, values, bound in (
            ("location columns", np.frombuffer(store.col, i32), len(store.locations)),
            ("names", np.frombuffer(store.narrow[N_SOURCE], i32), names),
            ("names", np.frombuffer(store.narrow[N_EVENT], i32), names),
            ("names", np.frombuffer(pool.sources, i32), names),
            ("delta slots", np.frombuffer(store.narrow[N_DELTAS], i32), max(slots, 1)),
            ("delta slots", np.frombuffer(pool.nexts, i32), max(slots, 1)),
            ("delta slots", np.frombuffer(pool.free, i32), max(slots, 1)),
            ("runs", np.concatenate([starts, starts + caps]), tail + 1),
            ("run lengths", np.concatenate([lengths, caps - lengths]), 2**31)):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= bound):
            raise SnapshotInconsistent(f"its {name} point past the {bound} there are")
