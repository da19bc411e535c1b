"""What a shard's snapshot holds (``Ledger.snapshot`` / ``Ledger.restore``)."""

from __future__ import annotations

import msgspec

from ._facts import Deltas
from ._model import Reservation
from ._store import StoreSnapshot


class LedgerSnapshot(msgspec.Struct, array_like=True):
    """A shard's state. The two big maps are the live ones, not copies (msgpack walks them without
    a Python step per entry): encode it before the shard takes its next turn."""

    store: StoreSnapshot
    reservations: list[Reservation]
    histories: dict[str, Deltas]  # pair_key -> the deltas a position keeps (its latest count is in store)
    seen: dict[str, bytes]  # E8: fact_key -> fact_payload, in arrival order
    stream_time: int
    clock: int
