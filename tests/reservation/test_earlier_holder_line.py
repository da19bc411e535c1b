"""Where the line between an earlier holder's SHIPMENT and the new holder's own falls (``earlier_holder``, R4, R5),
from the ledger's own forgetting: an id is reserved again only once its first holder is forgotten (``Ledger.evict``,
a retention after it was resolved). Half the retention before the new holder was made is the line; the other half is
the margin for clocks, either way. Pinned at the retention's floor (``atp-service`` refuses less), where the margin is
smallest: a gap between the source's clock and the group's of just under half the retention leaves the earlier
holder's shipments (stamped while it was live) earlier and the new holder's own shipments (stamped once it was made)
its own."""

from __future__ import annotations

import dataclasses

from reservation import Fact, FactKind, release, reserve
from reservation._order_shipments import earlier_holder
from tests.reservation.helpers import LIMITS, cmd, ledger_with

RETENTION_MS = 10 * 60 * 1000
FLOOR = dataclasses.replace(LIMITS, retention_ms=RETENTION_MS)
GAP_MS = RETENTION_MS // 2 - 1
"""The largest gap between a source's clock and a group's that the margin allows, ahead or behind."""
MADE, RESOLVED = 10_000, 11_000


def shipment(at: int) -> Fact:
    return Fact(f"ship-{at}", "wms", FactKind.SHIPMENT, "A", "S1", 1, at, "r")


def test_the_line_tells_an_earlier_holder_forgotten_from_the_new_one_within_half_a_retention_R4_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10}, FLOOR)
    reserve(ledger, cmd("r", ("A", "S1", 1)), MADE)
    ledger.commit(MADE)
    release(ledger, "r", (), "", RESOLVED, FLOOR)
    ledger.commit(RESOLVED)
    assert ledger.evict(RESOLVED + RETENTION_MS) == []  # remembered a whole retention (R5)
    again = RESOLVED + RETENTION_MS + 1
    assert ledger.evict(again) == ["r"]
    reserve(ledger, cmd("r", ("A", "S1", 1)), again)
    ledger.commit(again)
    new = ledger.reservation("r")
    assert new is not None and new.created_at == again
    for stamped in (MADE, RESOLVED, RESOLVED + GAP_MS):  # the first holder's, by a source's clock up to the gap ahead
        assert earlier_holder(new, shipment(stamped), FLOOR).startswith("the fact is stamped"), stamped
    for stamped in (again - GAP_MS, again, again + 60_000):  # the new holder's, by a clock up to the gap behind
        assert earlier_holder(new, shipment(stamped), FLOOR) == "", stamped
