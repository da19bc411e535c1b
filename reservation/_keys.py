"""The str keys of a ledger's big maps: one str per (sku, location) or per fact identity, not a tuple
(a fresh tuple is tracked by the cyclic GC, and inserting it makes the dict tracked again)."""

from __future__ import annotations

from ._model import Fact, FactKind

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


Payload = int | tuple[int, str]
"""What E8 remembers of an applied fact beside its identity: its payload, exactly — not the fact
object (the identity is the key, so sku, location, source and event_id need not be kept twice)."""

_QUANTITY_BIAS = 1 << 63  # quantities are bounded far inside ±2**63 (Limits): biased, they fit 64 bits
assert max(FactKind) < 8, "fact_payload packs a fact's kind in 3 bits"


def fact_payload(fact: Fact) -> Payload:
    """(event_time, kind, quantity) packed into one int, and the reservation id beside it when there
    is one: equal if and only if the payloads are. An int is not tracked by the cyclic GC, and costs
    about a third of the fact object it replaces."""
    return pack_payload(fact.event_time, fact.kind, fact.quantity, fact.reservation_id)


def pack_payload(event_time: int, kind: int, quantity: int, reservation_id: str) -> Payload:
    packed = (((event_time << 3) | kind) << 64) | (quantity + _QUANTITY_BIAS)
    return (packed, reservation_id) if reservation_id else packed


def payload_time(payload: Payload) -> int:
    """The event time of a remembered fact (``forget_old_facts`` sweeps by it)."""
    return (payload if isinstance(payload, int) else payload[0]) >> 67
