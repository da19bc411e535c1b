"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ._columns import StoreSnapshot
from ._dedupe import MemorySnapshot
from ._deltas import PoolSnapshot
from ._model import Reservation
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
