"""A ledger from its snapshot, a slice of reservations (and of names) at a time (E10).

A shard's snapshot holds every live reservation and every resolved one still within its retention
(R5): hundreds of thousands, at ~5 µs each to index (holds by position, expiry, retention order).
Restored in one go, a shard taken over while this process serves others (ownership by leases) held
the event loop for seconds: no call answered, no lease renewed — as did its table of names, one
a position where counts came as facts (``Names.restoring``). ``restoring`` yields between
slices so that a recovery lets other work run there; the ledger it builds is no one else's until
it returns, so nothing changes under it between slices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ._columns import N_EVENT, N_SOURCE
from ._dedupe import FactMemory
from ._deltas import DeltaPool
from ._events import ReservationSaved
from ._facts import Histories
from ._names import Names
from ._snapshot import LedgerSnapshot, check_layout
from ._store import PositionStore

if TYPE_CHECKING:
    from ._ledger import Ledger

T = TypeVar("T")
RESTORE_SLICE = 20_000
"""Reservations of a snapshot restored between two turns of the event loop (~0.1 s of work)."""


def restoring(ledger: Ledger, snap: LedgerSnapshot, slice_size: int = RESTORE_SLICE) -> Generator[None, None, Ledger]:
    """``ledger`` (new, empty) made the state of ``snap``, ``slice_size`` reservations (and names) at a
    time; yields between slices and returns the ledger. A snapshot whose columns this build does not lay out
    so is refused first, whole (``check_layout``: ``SnapshotInconsistent``)."""
    check_layout(snap)
    pool = DeltaPool.restore(snap.deltas)
    users = [np.frombuffer(snap.store.narrow[n], dtype=np.int32) for n in (N_SOURCE, N_EVENT)]  # as ``name_users``
    names = yield from Names.restoring(snap.store.names, *users, pool.sources, slice_size=slice_size)
    ledger.store = PositionStore.restore(snap.store, names)
    ledger.histories = Histories(ledger.store, pool)
    ledger.memory = yield from FactMemory.restoring(ledger.store, snap.seen, slice_size)
    records = snap.reservations
    for at in range(0, len(records), slice_size):
        if at:
            yield
        for i in range(at, min(at + slice_size, len(records))):
            ledger._apply(ReservationSaved(records[i]))
    # Forgotten in the order they were resolved, as the live ledger would (the snapshot holds them
    # in the order they were made): a restored instance must not keep one longer (R5's window).
    ledger._resolved = deque(sorted(ledger._resolved))
    ledger.stream_time, ledger.clock, ledger.forgotten_before = snap.stream_time, snap.clock, snap.forgotten_before
    return ledger


def run_through(steps: Generator[None, None, T]) -> T:
    """What ``steps`` returns, run without a pause."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
