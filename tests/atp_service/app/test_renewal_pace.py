"""When a process renews its membership and leases next (``RenewalPace``): soon after a failure, backing
off to a bound well inside the part of the lease left, and back to a third of a lease once renewed."""

from __future__ import annotations

import pytest

from atp_service.app.balancing import RENEW_RETRY_FIRST_S, RENEW_RETRY_MOST, RenewalPace
from atp_service.app.membership import SAFETY


def test_a_renewal_that_renewed_everything_waits_a_third_of_a_lease() -> None:
    pace = RenewalPace(6.0)
    assert pace.usual_s == pytest.approx(2.0)
    assert pace.after(True, now=10.0) == pytest.approx(2.0)
    assert pace.failing_s(12.0) == 0.0


def test_failed_renewals_are_tried_again_soon_backing_off_to_a_bound() -> None:
    pace = RenewalPace(5.0)
    waits = [pace.after(False, now=100.0 + n) for n in range(6)]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert waits[0] == RENEW_RETRY_FIRST_S and max(waits) == 5.0 * RENEW_RETRY_MOST
    assert pace.failing_s(107.5) == pytest.approx(7.5)  # since the first failure
    assert pace.after(True, now=108.0) == pytest.approx(5.0 / 3)
    assert pace.failing_s(108.0) == 0.0
    assert pace.after(False, now=109.0) == pytest.approx(0.1)  # a new streak starts over


@pytest.mark.parametrize("lease_s", [0.3, 1.0, 5.0, 600.0])
def test_the_longest_wait_after_a_failure_leaves_most_of_the_answering_part_of_a_lease(lease_s: float) -> None:
    """Once Redis is back, the next renewal comes within the longest retry wait plus one Redis timeout: a
    tenth of the lease, against the ``SAFETY`` (8 tenths) it answers for after the last renewal sent; with a
    third of a lease, a stall of half a lease left the groups unanswered after Redis was back."""
    pace = RenewalPace(lease_s)
    longest = max(pace.after(False, now=float(n)) for n in range(40))
    assert longest <= max(RENEW_RETRY_FIRST_S, lease_s * RENEW_RETRY_MOST)
    assert longest < pace.usual_s or lease_s * SAFETY <= 0.3
    assert RENEW_RETRY_FIRST_S < 0.3 * SAFETY  # the shortest lease allowed: its first retry still in time


def test_a_renewal_that_renewed_everything_is_followed_a_third_of_a_lease_after_it_was_sent() -> None:
    """Counted from the send, as the groups' deadlines are: an answer that took long shortens the wait, one
    that took a third of a lease or more is followed at once."""
    pace = RenewalPace(6.0)
    assert pace.after(True, now=10.5, sent=10.0) == pytest.approx(1.5)
    assert pace.after(True, now=12.5, sent=10.0) == 0.0
    assert pace.after(False, now=13.0, sent=12.9) == pytest.approx(RENEW_RETRY_FIRST_S)  # a failure: from its end
