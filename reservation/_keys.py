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


Payload = int
"""What E8 remembers of an applied fact beside its identity, exactly enough to tell a resend (same
payload) from a conflict (another) — not the fact object: its event time and a 64-bit summary of
the rest, as one int (``event_time << 64 | rest``, see ``pack_payload``)."""

_HASHED = 1 << 63  # the top bit of ``rest``: a digest, not the exact kind and quantity
_EXACT_QUANTITY = 1 << 54  # quantities in [-2**54, 2**54) fit the exact form (Limits caps them at 2**53)
_QUANTITY_BITS = (1 << 55) - 1
_REST = struct.Struct(">Bq")  # kind, quantity: the fixed-width head of what a digested rest covers


def fact_payload(fact: Fact) -> Payload:
    """The payload of ``fact`` as one int: equal when the payloads are, and unequal when they are not
    (exactly for a fact that names no reservation; see ``pack_payload``)."""
    return pack_payload(fact.event_time, fact.kind, fact.quantity, fact.reservation_id)


def pack_payload(event_time: int, kind: int, quantity: int, reservation_id: str) -> Payload:
    """``event_time << 64 | rest``. ``rest`` is exact for a fact naming no reservation: the kind in
    bits 55-62, the quantity in bits 0-54 as two's complement (any quantity within ±2⁵⁴, past every
    bound ``Limits`` allows). For a fact naming one (a SHIPMENT), or a quantity past that, it is the
    top bit over a 63-bit BLAKE2b digest of (kind, quantity, reservation id): two such payloads that
    differ only there are taken for equal with probability 2⁻⁶³; never equal to an exact one."""
    if not reservation_id and 0 <= kind < 256 and -_EXACT_QUANTITY <= quantity < _EXACT_QUANTITY:
        return event_time << 64 | kind << 55 | quantity & _QUANTITY_BITS
    digest = hashlib.blake2b(_REST.pack(kind, quantity) + reservation_id.encode(), digest_size=8).digest()
    return event_time << 64 | _HASHED | int.from_bytes(digest) >> 1


def payload_time(payload: Payload) -> int:
    """The event time of a remembered fact (``FactMemory.forget_old`` sweeps by it)."""
    return payload >> 64
