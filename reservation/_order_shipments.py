"""Whose part a SHIPMENT fact naming an order fulfils at the fact's shard (``ship``), where the part holding
the id there is another order's of that id (``_order_losses.others``: the first no longer remembered, R5, the id
reserved again, then the part's group back from data older than this order's part, R7), pure.

The fact's ``event_time`` tells whose shipment it is. One stamped at or after the order opened cannot be the other
order's, resolved and forgotten before that: it is this order's, whose part there is gone, so it fulfils nothing (the
stock moves alone, Q1, R4; answered and logged not fulfilled). One stamped before cannot be this order's: a late fact
of the other order, which fulfils that order's part (R4: committed and on_hand together) as of the part's last change
— a fact of an order long resolved is no sign of it live, and stamped changed now a ``stale`` copy was no longer
judged stale: kept committed for good, released by none of the order's steps (Q3). A fact is applied once whichever
(E8: its identity recorded with the stock's move, in the same step).

Whatever the part found, a fact stamped before the reservation it names was made by half the retention or more is no
shipment of it (``earlier_holder``): an id is reserved again only once its first holder is forgotten, a retention after
it was resolved (R5), and a late fact of that first holder, let in by the grace (E6), fulfilled the new holder's units
though none of them shipped (Q3, R4). It moves the stock alone, answered and logged not fulfilled, on an ordinary
reservation's path as on an order's. The other half of the retention is the margin for clocks (as ``_order_losses``
tells an earlier order's part by its age, R3): a source's clock behind the service's, or a group's clock ahead (taken
over from a host whose clock ran ahead), by minutes must not leave a reservation's own shipment fulfilling nothing."""

from __future__ import annotations

import enum
from collections.abc import Callable

from . import _operations as ops
from . import _order_losses as losses
from ._errors import DomainError
from ._limits import Limits
from ._model import Fact, FactOutcome, LineRequest, Reservation
from ._operations import View
from ._orders import Place, order_of
from ._unfulfilled import NotFulfilled, Unfulfilled, fulfilment_refused


class Fulfils(enum.Enum):
    """What a SHIPMENT fact does to the part holding its order's id at its shard."""

    OWN = enum.auto()
    """The order's own part (or its order not known here, ``ship``): fulfilled, changed now."""
    OTHERS = enum.auto()
    """Another order's, the fact stamped before the order opened: fulfilled, its last change kept."""
    NONE = enum.auto()
    """Another order's, the fact stamped at or after the order opened: left as it is."""
    EARLIER = enum.auto()
    """The order's own, the fact stamped half the retention or more before it opened (``earlier_holder``): left."""


Judge = Callable[[Reservation, Fact], Fulfils]
"""Whose the part found at the fact's shard is, as the SHIPMENT ``Fact`` naming the order sees it."""


def earlier_holder(rec: Reservation | None, fact: Fact, limits: Limits) -> str:
    """Why the SHIPMENT ``fact`` naming ``rec`` is no shipment of it: stamped before ``rec`` was made (its
    ``created_at``, by its home's clock, R6; an order's record, not a part's: a part made again later keeps no
    earlier time) by half ``retention_ms`` or more. Then it is a late fact of an earlier holder of the id (R5: reserved
    again once that one was forgotten, a retention after it was resolved; E6 let it in). Not by the skew E7 allows
    (``fact_future_skew_ms``): a source's clock behind, or a group's ahead (``GroupClock``), by more than that made
    every shipment of a reservation soon after it was made fulfil nothing, its units committed for good (Q3) — and
    only at the processes whose clocks ran so (E8). Empty: it may be ``rec``'s (``rec`` None: nothing to tell).
    Decided by what the log holds alone (E10)."""
    margin = limits.retention_ms // 2  # the other half: the clocks' margin (``_order_losses.stale``, R3)
    if rec is None or fact.event_time > rec.created_at - margin:
        return ""
    return (f"the fact is stamped {rec.created_at - fact.event_time} ms before reservation {rec.reservation_id!r} "
            f"was made, half the retention ({margin} ms) or more: a shipment of an earlier holder of its id, "
            "forgotten before it was made")


def judge(order: Reservation, group: int, place: Place, limits: Limits) -> Judge:
    """Whose the part at ``group`` is for a SHIPMENT naming ``order`` (its record as its home holds it, its pending
    change carried through): its own part (``_order_losses.own_parts``), or another order's of that id, fulfilled
    only by a fact stamped before ``order`` opened (by its home's clock, R6); its own, never by one stamped half the
    retention or more before that (``earlier_holder``)."""
    def whose(part: Reservation, fact: Fact) -> Fulfils:
        if not losses.others(order, {group: part}, place, limits):
            return Fulfils.EARLIER if earlier_holder(order, fact, limits) else Fulfils.OWN
        return Fulfils.OTHERS if fact.event_time < order.created_at else Fulfils.NONE

    return whose


def ship(view_: View, fact: Fact, part: str, now: int, limits: Limits,
         whose: Judge | None = None) -> tuple[FactOutcome, str]:
    """A SHIPMENT fact naming an order, on the fact's shard: the stock moves, and the part holding ``part``'s id there
    fulfils the fact's line with it, unless ``whose`` tells it another order's the fact cannot be (R4; idempotent by
    the fact's identity, E8: a resend is a duplicate). ``whose`` None: the order not known here (forgotten at its home,
    or no process said it holds it): the part found is taken as its own. The fact's outcome, and why it fulfilled
    nothing (empty: it fulfilled its line)."""
    outcome, reason = view_.record_fact(fact)
    if outcome not in (FactOutcome.APPLIED, FactOutcome.ABSORBED):
        return outcome, reason
    order_id, found = order_of(part), view_.reservation(part)
    if found is None and whose is None:  # the reservation gone, not the producer's location astray: ``unknown``
        return outcome, NotFulfilled(Unfulfilled.UNKNOWN, f"reservation {order_id!r} unknown")
    if found is None:
        return outcome, NotFulfilled(Unfulfilled.NOT_A_LINE,
                                     f"{fact.sku}@{fact.location} is not a line of reservation {order_id!r}")
    judged = Fulfils.OWN if whose is None else whose(found, fact)
    if judged == Fulfils.NONE:
        return outcome, NotFulfilled(Unfulfilled.EARLIER_ORDER, f"the part at {fact.sku}@{fact.location} is an earlier "
                                     f"order's of id {order_id!r}, and the fact is stamped after this one opened")
    if judged == Fulfils.EARLIER:
        return outcome, NotFulfilled(Unfulfilled.EARLIER_HOLDER, f"the fact is stamped before order {order_id!r} "
                                     "opened by half the retention or more: a shipment of an earlier holder of its id")
    at = now if judged == Fulfils.OWN else found.updated_at  # another order's: as stale as it was (``Fulfils``)
    try:  # the fact moved on_hand already: only committed moves here
        ops.fulfill_committed(view_, part, (LineRequest(fact.sku, fact.location, fact.quantity),), at, limits)
    except DomainError as exc:
        return outcome, fulfilment_refused(exc)
    return outcome, ""
