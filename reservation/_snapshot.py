"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

import msgspec

from ._deltas import PoolSnapshot
from ._model import Reservation
from ._store import StoreSnapshot


class LedgerSnapshot(msgspec.Struct, array_like=True):
    """A shard's state. The E8 map is the live one, not a copy (msgpack walks it without a Python
    step per entry): encode it before the shard takes its next turn."""

    store: StoreSnapshot
    reservations: list[Reservation]
    deltas: PoolSnapshot  # the kept deltas; each position's chain starts in store.ids
    seen: dict[str, bytes]  # E8: fact_key -> fact_payload, in arrival order
    stream_time: int
    clock: int
