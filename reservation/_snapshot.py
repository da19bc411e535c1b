"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

import msgspec

from ._facts import OrderKey
from ._model import Reservation
from ._store import StoreSnapshot


class HistorySnapshot(msgspec.Struct, array_like=True):
    sku: str
    location: str
    count_key: OrderKey | None  # E1 keys (event_time, rank, source, event_id)
    count_qty: int
    delta_keys: list[OrderKey]
    delta_qtys: list[int]


class LedgerSnapshot(msgspec.Struct, array_like=True):
    store: StoreSnapshot
    reservations: list[Reservation]
    histories: list[HistorySnapshot]
    # E8, per remembered fact: (identity, payload's high and low 64 bits, reservation id); see fact_payload
    seen: list[tuple[str, int, int, str]]
    stream_time: int
    clock: int
