"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

import msgspec

from ._dedupe import MemorySnapshot
from ._deltas import PoolSnapshot
from ._model import Reservation
from ._store import StoreSnapshot


class LedgerSnapshot(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A shard's state: its columns as views (encode it in the turn it is taken, see ``raw``), and
    lists of what is open."""

    store: StoreSnapshot
    reservations: list[Reservation]
    deltas: PoolSnapshot  # the kept deltas; each position's chain starts in store.ids
    seen: MemorySnapshot  # E8
    stream_time: int
    clock: int
