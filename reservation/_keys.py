"""The str keys of a ledger's big maps: one str per (sku, location) or per fact identity, not a tuple
(a fresh tuple is tracked by the cyclic GC, and inserting it makes the dict tracked again)."""

from __future__ import annotations

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
