"""The expiry heap's stale entries (R3): bounded by the live reservations, not by their TTLs.

``Ledger._expiry`` gets an entry (expires_at, id) whenever a hold is saved with a new expiry; a hold
confirmed, released or given another TTL leaves its entry behind, and ``Ledger.due`` skips it once
its time comes — up to ``max_ttl_seconds`` (7 days) later: past the retention window, and outside
``max_live_reservations_per_shard``, so a caller reserving and releasing grew the heap for a week.
Between batches the stale entries are dropped once they outnumber the live reservations by
``EXPIRY_SLACK``: the heap holds at most 2 x live + ``EXPIRY_SLACK`` entries between passes, each
entry looked at a bounded number of times (amortised O(1) a hold).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from ._model import Reservation, State

EXPIRY_SLACK = 1024
"""Expiry entries allowed beyond twice the live reservations before the stale ones are dropped."""


def expiry_stale(entries: int, live: int) -> bool:
    """Whether a heap of ``entries`` holds enough stale ones (``live`` reservations) to sweep."""
    return entries > 2 * live + EXPIRY_SLACK


def held_only(expiry: list[tuple[int, str]], records: Mapping[str, Reservation]) -> list[tuple[int, str]]:
    """The entries of ``expiry`` still naming a hold due then, as a heap."""
    kept = [(at, rid) for at, rid in expiry
            if (rec := records.get(rid)) is not None and rec.state == State.HELD and rec.expires_at == at]
    heapq.heapify(kept)
    return kept
