"""The str keys of a ledger's big maps: one str per (sku, location) or per fact identity, not a tuple
(a fresh tuple is tracked by the cyclic GC, and inserting it makes the dict tracked again)."""

from __future__ import annotations

import hashlib
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
"""What E8 remembers of an applied fact beside its identity: its payload, exactly enough to tell a
resend (same payload) from a conflict (another) — not the fact object."""

_PAYLOAD = struct.Struct(">qBqQ")  # event_time, kind, quantity, the reservation id's digest (0: none)
PAYLOAD_SIZE = _PAYLOAD.size


def fact_payload(fact: Fact) -> Payload:
    """(event_time, kind, quantity, reservation id) as 25 bytes: equal exactly when the payloads are
    (the reservation id by a 64-bit digest: only SHIPMENT facts carry one, and only a resend under
    the same identity at the same time, kind and quantity is compared with it)."""
    return pack_payload(fact.event_time, fact.kind, fact.quantity, fact.reservation_id)


def pack_payload(event_time: int, kind: int, quantity: int, reservation_id: str) -> Payload:
    rid = int.from_bytes(hashlib.blake2b(reservation_id.encode(), digest_size=8).digest()) if reservation_id else 0
    return _PAYLOAD.pack(event_time, kind, quantity, rid)


def payload_time(payload: Payload) -> int:
    """The event time of a remembered fact (``forget_old_facts`` sweeps by it)."""
    return int.from_bytes(payload[:8], signed=True)
