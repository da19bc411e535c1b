"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

import msgspec

from ._facts import OrderKey
from ._model import Reservation
from ._store import StoreSnapshot


class HistorySnapshot(msgspec.Struct, array_like=True):
    """The deltas a position keeps (its latest count is in the store's columns)."""

    sku: str
    location: str
    keys: list[OrderKey]  # E1 keys (event_time, rank, source, event_id)
    qtys: list[int]


class LedgerSnapshot(msgspec.Struct, array_like=True):
    store: StoreSnapshot
    reservations: list[Reservation]
    histories: list[HistorySnapshot]
    # E8, per remembered fact: (identity, payload's high and low 64 bits, reservation id); see fact_payload
    seen: list[tuple[str, int, int, str]]
    stream_time: int
    clock: int
