"""The str keys of a ledger's big maps: one str per (sku, location) or per fact identity, not a tuple
(a fresh tuple is tracked by the cyclic GC, and inserting it makes the dict tracked again)."""

from __future__ import annotations

import struct

from ._model import Fact

_SEP = "\x00"  # check_id refuses control characters, so it cannot occur inside an id


def pair_key(first: str, second: str) -> str:
    """One str for (sku, location): the key of the ledger's big maps (facts: ``fact_key``)."""
    return f"{first}{_SEP}{second}"


def split_key(key: str) -> tuple[str, str]:
    first, _, second = key.partition(_SEP)
    return first, second


def fact_key(fact: Fact) -> str:
    """E8: a fact's identity, ``(source, event_id)`` at its position (sku, location), as one str.
    Per position, so the lines of one till receipt sharing an id are each applied, and whether two
    positions share a shard never changes an answer."""
    return f"{fact.source}{_SEP}{fact.event_id}{_SEP}{fact.sku}{_SEP}{fact.location}"


Payload = bytes
"""What E8 remembers of an applied fact beside its identity: its payload, exactly — not the fact
object (the identity is the key, so sku, location, source and event_id need not be kept twice)."""

_PAYLOAD = struct.Struct(">qBq")  # event_time, kind, quantity; then the reservation id's UTF-8, if any


def fact_payload(fact: Fact) -> Payload:
    """(event_time, kind, quantity, reservation_id) as bytes: equal if and only if the payloads are.
    Bytes are not tracked by the cyclic GC, cost about a third of the fact object they replace, and a
    snapshot carries a map of them as it is (msgpack bin), without a Python step per fact."""
    return pack_payload(fact.event_time, fact.kind, fact.quantity, fact.reservation_id)


def pack_payload(event_time: int, kind: int, quantity: int, reservation_id: str) -> Payload:
    packed = _PAYLOAD.pack(event_time, kind, quantity)
    return packed + reservation_id.encode() if reservation_id else packed


def unpack_payload(payload: Payload) -> tuple[int, int, int]:
    """(event_time, kind, quantity) of a remembered fact."""
    return _PAYLOAD.unpack_from(payload)


def payload_time(payload: Payload) -> int:
    """The event time of a remembered fact (``forget_old_facts`` sweeps by it)."""
    return int.from_bytes(payload[:8], signed=True)
