"""What the log records: the outcome of every decision, never the command.

Replay applies these without deciding again, so a restored shard holds exactly
what was acknowledged (R7, E10) whatever the clock or the stock says on restart.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ._model import Fact, Reservation


class HoldMoved(msgspec.Struct, tag="h", array_like=True, gc=False, forbid_unknown_fields=True):
    """Q2/Q3 changes of one position made by a reservation command."""

    sku: str
    location: str
    d_reserved: int
    d_committed: int


class Shipped(msgspec.Struct, tag="x", array_like=True, gc=False, forbid_unknown_fields=True):
    """R4: committed and on-hand fall together; ``at`` orders it among facts (E1)."""

    sku: str
    location: str
    quantity: int
    at: int
    ref: str


class ReservationSaved(msgspec.Struct, tag="r", array_like=True, gc=False, forbid_unknown_fields=True):
    reservation: Reservation


class FactApplied(msgspec.Struct, tag="f", array_like=True, gc=False, forbid_unknown_fields=True):
    """A fact accepted for folding (APPLIED or ABSORBED both keep it for dedupe)."""

    fact: Fact


class FactQuarantined(msgspec.Struct, tag="q", array_like=True, gc=False, forbid_unknown_fields=True):
    fact: Fact
    reason: str


class SafetyStockSet(msgspec.Struct, tag="s", array_like=True, gc=False, forbid_unknown_fields=True):
    sku: str
    location: str
    quantity: int


class CountsLoaded(msgspec.Struct, tag="c", array_like=True, gc=False, forbid_unknown_fields=True):
    """COUNT facts of one source that each made a new position (E2), in columns (``LoadCounts``):
    row i is (``source``, ``count@<at[i]>``) at (skus[sku_index[i]], locations[location_index[i]]).
    ``safety`` is Q4 for each location's new positions, as decided live (the estate's defaults), so
    replay equals live (E10). Packed little-endian: uint32 indices, int64 quantities and times."""

    source: str
    skus: list[str]
    locations: list[str]
    sku_index: bytes
    location_index: bytes
    quantity: bytes
    at: bytes
    safety: bytes


Event = HoldMoved | Shipped | ReservationSaved | FactApplied | FactQuarantined | SafetyStockSet | CountsLoaded


class LogEntry(msgspec.Struct, array_like=True, gc=False, forbid_unknown_fields=True):
    """One group-committed batch of one shard: its service timestamp (R6) and events. Each event,
    and each struct in it, forbids elements past its last field: an entry a newer build wrote (a
    field added at the end, an event this build does not know) does not decode, and recovery refuses
    it rather than replay it without what it cannot read."""

    ts: int
    events: list[Event]


_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(LogEntry)


encode_entry: Callable[[LogEntry], bytes] = _encoder.encode
"""A log entry's bytes: the encoder's own method, without a Python frame around it (every entry's)."""


def decode_entry(data: bytes) -> LogEntry:
    return _entry_decoder.decode(data)


def saved_since(events: list[Event], now: int, unsure_from: int | None) -> int:
    """What retention keeps from (R5/R7): ``unsure_from`` (None: ``now``), or the oldest ``updated_at`` of a
    record ``events`` save when older: an order's saga stamps its decision with the clock it read, and a
    later turn saves it, so a change not yet durable may resolve a record stamped before its entry."""
    return min([now if unsure_from is None else unsure_from,
                *(e.reservation.updated_at for e in events if type(e) is ReservationSaved)])
