"""Why a SHIPMENT naming a reservation fulfilled nothing, from the refusal of its fulfilment (``fulfilment_refused``):
a closed vocabulary, the answer's text unchanged beside it (R4)."""

from __future__ import annotations

import pytest

from reservation import DomainError, Reason
from reservation._errors import FailedPrecondition, InvalidArgument, NotFound
from reservation._unfulfilled import UNFULFILLED, NotFulfilled, Unfulfilled, fulfilment_refused


@pytest.mark.parametrize(("refusal", "cause"), [
    (NotFound("reservation_id: no reservation 'r'"), Unfulfilled.UNKNOWN),
    (FailedPrecondition("HELD", "confirm the reservation before fulfilling it", "r"), Unfulfilled.NOT_CONFIRMED),
    (FailedPrecondition("FULFILLED", "only a CONFIRMED reservation can be fulfilled", "r"), Unfulfilled.RESOLVED),
    (FailedPrecondition("EXPIRED", "only a CONFIRMED reservation can be fulfilled", "r"), Unfulfilled.RESOLVED),
    (InvalidArgument("lines[0]", "A@S2 is not a line of this reservation"), Unfulfilled.NOT_A_LINE),
    (InvalidArgument("lines[0].quantity", "1 exceeds the 0 units committed"), Unfulfilled.REFUSED),
    (DomainError("operation_id: too many", Reason.OPERATION_LIMIT_REACHED), Unfulfilled.REFUSED),
])
def test_a_refused_fulfilment_is_told_with_its_cause_R4(refusal: DomainError, cause: Unfulfilled) -> None:
    told = fulfilment_refused(refusal)
    assert (told, told.cause) == (f"{UNFULFILLED}: {refusal.message}", cause)


def test_the_cause_rides_beside_the_text_not_in_it() -> None:
    """A SKU or id a caller chose that reads like another cause's words does not change the cause counted."""
    told = NotFulfilled(Unfulfilled.NOT_A_LINE, "the fact is stamped@DC is not a line of reservation 'r'")
    assert told.cause == Unfulfilled.NOT_A_LINE and isinstance(told, str)
