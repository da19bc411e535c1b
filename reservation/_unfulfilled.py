"""Why a SHIPMENT fact naming a reservation moved the stock and fulfilled nothing of it (R4), pure: the answer's text
and, beside it, its cause in a closed vocabulary (``Unfulfilled``) — the ``reason`` label of
``atp_shipments_unfulfilled_total``, by which an operator tells a late shipment of an earlier holder of the id (nothing
to do) from a reservation whose units stay reserved or committed beside the units already gone (to fix by hand)."""

from __future__ import annotations

import enum

from ._errors import DomainError, FailedPrecondition, InvalidArgument, NotFound

UNFULFILLED = "stock moved; reservation not fulfilled"
"""How the reason of a SHIPMENT that moved stock but fulfilled nothing of its reservation begins."""


class Unfulfilled(enum.Enum):
    """Why a SHIPMENT naming a reservation fulfilled nothing of it; the value is the metric's label."""

    UNKNOWN = "unknown"
    """No reservation of that id here: not made yet, or forgotten."""
    NOT_CONFIRMED = "not_confirmed"
    """The reservation still HELD: shipped before it was confirmed."""
    RESOLVED = "resolved"
    """The reservation fulfilled, released or expired already (a shipment reported twice, or after a release)."""
    NOT_A_LINE = "not_a_line"
    """No line of the reservation (or part of the order) at the fact's position."""
    EARLIER_HOLDER = "earlier_holder"
    """The fact stamped half the retention or more before the reservation was made: a late shipment of an earlier
    holder of its id (``_order_shipments.earlier_holder``)."""
    EARLIER_ORDER = "earlier_order"
    """The part at the fact's position an earlier order's of the id, the fact stamped after this one opened
    (``_order_shipments.Fulfils.NONE``): this order's part there is gone."""
    REFUSED = "refused"
    """Any other refusal: nothing committed at the position (its line not granted), or the reservation refusing a step
    before its fulfilment for good."""


class NotFulfilled(str):
    """A SHIPMENT's answer where it moved the stock and fulfilled nothing (``UNFULFILLED: why``), with its ``cause``:
    counted by that cause where the answer is told, never read back out of a text holding SKUs and ids callers chose."""

    cause: Unfulfilled

    def __new__(cls, cause: Unfulfilled, why: str) -> NotFulfilled:
        reason = super().__new__(cls, f"{UNFULFILLED}: {why}")
        reason.cause = cause
        return reason


def fulfilment_refused(refusal: DomainError) -> NotFulfilled:
    """The answer of a SHIPMENT whose reservation refused the fulfilment (``_operations.fulfill_committed``), its
    message told: gone (``NotFound``), by its state (``FailedPrecondition``: HELD, or resolved), a position that is no
    line of it (``lines[n]``), or anything else (``lines[n].quantity``: nothing committed there)."""
    cause = Unfulfilled.REFUSED
    if isinstance(refusal, NotFound):
        cause = Unfulfilled.UNKNOWN
    elif isinstance(refusal, FailedPrecondition):
        cause = Unfulfilled.NOT_CONFIRMED if refusal.state == "HELD" else Unfulfilled.RESOLVED
    elif isinstance(refusal, InvalidArgument) and refusal.field.startswith("lines[") and refusal.field.endswith("]"):
        cause = Unfulfilled.NOT_A_LINE
    return NotFulfilled(cause, refusal.message)
