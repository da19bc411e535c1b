"""Obligations SEMANTICS.md and API.md state in a word, pinned at their edges: E6's grace (a fact stamped
before stream time minus grace is late, one stamped at it is not), E7's skew (a fact stamped more than the
skew ahead is refused, one stamped exactly the skew ahead is taken), the stated defaults (R5's retention and
E6's grace 24 h, E7's skew 5 min), and R5's refusal of an id reused with other content naming the first
field that differs in the order ``order_ref``, ``channel``, ``lines``, ``ttl``, ``allow_partial``."""

from __future__ import annotations

import pytest

from reservation import (
    AlreadyExists,
    Fact,
    FactKind,
    FactOutcome,
    InvalidArgument,
    Ledger,
    Limits,
    Reason,
    fact,
    reserve,
)
from tests.reservation.helpers import cmd, ledger_with

HOUR_MS, MINUTE_MS = 3_600_000, 60_000
NOW = 1_790_000_000_000


def test_the_stated_defaults_are_the_limits_defaults_R5_E6_E7() -> None:
    limits = Limits()
    assert (limits.retention_ms, limits.fact_grace_ms, limits.fact_future_skew_ms) == (
        24 * HOUR_MS, 24 * HOUR_MS, 5 * MINUTE_MS)


def test_a_fact_stamped_at_stream_time_minus_grace_is_applied_one_ms_before_it_is_late_E6() -> None:
    ledger = Ledger(0, Limits(fact_grace_ms=1_000))
    ledger.record_fact(Fact("newest", "pos", FactKind.RECEIPT, "A", "S1", 5, 10_000))
    assert ledger.record_fact(Fact("at", "pos", FactKind.SALE, "A", "S1", 1, 9_000)) == (FactOutcome.APPLIED, "")
    outcome, reason = ledger.record_fact(Fact("before", "pos", FactKind.SALE, "A", "S1", 1, 8_999))
    assert outcome == FactOutcome.QUARANTINED and reason.startswith("late")
    assert ledger.quantities("A", "S1").on_hand == 4


def _stamped(at: int) -> Fact:
    return fact("e", "pos", int(FactKind.RECEIPT), "A", "S1", 1, at, "", NOW, Limits())


def test_a_fact_stamped_exactly_the_skew_ahead_is_taken_one_ms_more_is_refused_as_bad_input_E7() -> None:
    skew = Limits().fact_future_skew_ms
    assert _stamped(NOW + skew).event_time == NOW + skew
    with pytest.raises(InvalidArgument) as refused:
        _stamped(NOW + skew + 1)
    assert (refused.value.field, refused.value.reason) == ("event_time", Reason.INVALID_FIELD)


FIELDS = ("order_ref", "channel", "lines", "ttl", "allow_partial")
"""A Reserve's content (R5), in the order a refusal names the first that differs."""


@pytest.mark.parametrize("first", FIELDS)
def test_an_id_reused_names_the_first_field_that_differs_in_the_stated_order_R5(first: str) -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)  # o-1, web, A@S1 x2, 60 s, all or none
    changed = FIELDS[FIELDS.index(first):]  # it and every field after it
    retry = cmd("r1", ("A", "S1", 3 if "lines" in changed else 2), ttl=61 if "ttl" in changed else 60,
                partial="allow_partial" in changed, order_ref="o-2" if "order_ref" in changed else "o-1",
                channel="app" if "channel" in changed else "web")
    with pytest.raises(AlreadyExists) as refused:
        reserve(ledger, retry, NOW)
    assert (refused.value.reason, refused.value.fields) == (Reason.RESERVATION_ID_REUSED, (first,))
    assert ledger.quantities("A", "S1").reserved == 2
