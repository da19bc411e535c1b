"""Every fact validation accepts, judged by any clock (``FAR_FUTURE``: one read from an input stream stamped
ahead, E7 against E8), can be sent to its group's owner: its ``RecordEvents`` request is built, within
``max_message_bytes``, and read there as the same fact. A fact that could not be built failed the whole send to
its owner, every fact read with it pending for good."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atp_service.edge.fits import largest_id_length
from atp_service.edge.record import _fact_of, requests_of
from atp_service.intake.entries import FAR_FUTURE
from reservation import Fact, InvalidArgument, Limits
from reservation import fact as make_fact
from reservation._limits import MAX_QUANTITY_CEILING
from reservation._validate import LAST_EVENT_TIME_MS

SMALLEST_MESSAGE = 64 << 10
"""The smallest ``max_message_bytes`` a start accepts."""
LIMITS = Limits(max_id_length=largest_id_length(SMALLEST_MESSAGE), max_quantity=MAX_QUANTITY_CEILING,
                max_on_hand=MAX_QUANTITY_CEILING)
_PRINTABLE = st.characters(categories=["L", "N", "P", "S"])
_VALID_IDS = st.one_of(st.text(_PRINTABLE, min_size=1, max_size=8),
                       st.text(st.characters(categories=["Lo"], min_codepoint=0x20000), min_size=1,
                               max_size=LIMITS.max_id_length // 4))
_IDS = st.one_of(_VALID_IDS, st.text(max_size=6))
"""Ids validation accepts (printable, of up to four bytes a character, the longest), and any text."""
_KINDS = st.integers(1, 6)
_TIMES = st.one_of(st.integers(1, LAST_EVENT_TIME_MS), st.integers(LAST_EVENT_TIME_MS - 2, LAST_EVENT_TIME_MS + 2),
                   st.sampled_from([0, -1, -(2**63), 2**63, 2**64]))
_QUANTITIES = st.one_of(st.integers(1, MAX_QUANTITY_CEILING), st.integers(-MAX_QUANTITY_CEILING, -1),
                        st.sampled_from([0, MAX_QUANTITY_CEILING + 1, -MAX_QUANTITY_CEILING - 1, 2**63, 2**64]))
"""Mostly values validation accepts, to their bounds, and a few past every bound (int64's included)."""


@settings(max_examples=3000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_VALID_IDS, _VALID_IDS, _KINDS, _IDS, _VALID_IDS, _QUANTITIES, _TIMES, st.one_of(st.just(""), _IDS))
def test_a_valid_fact_is_sent_as_it_is(event_id: str, source: str, kind: int, sku: str, location: str, quantity: int,
                                       event_time: int, reservation_id: str) -> None:
    try:
        fact = make_fact(event_id, source, kind, sku, location, quantity, event_time, reservation_id, FAR_FUTURE,
                         LIMITS)
    except InvalidArgument:
        return  # not a fact: dead-lettered where read
    requests = requests_of([fact], LIMITS.max_events_per_call, SMALLEST_MESSAGE)
    assert [request.ByteSize() <= SMALLEST_MESSAGE for request in requests] == [True]
    assert [_fact_of(event, FAR_FUTURE, LIMITS) for event in requests[0].events] == [fact]


def test_the_longest_fact_fits_the_smallest_message() -> None:
    """Five ids of the longest, of four-byte characters: still one request within the smallest message."""
    longest = "\U00020000" * (LIMITS.max_id_length // 4)
    fact = make_fact(longest, longest, 5, longest, longest, 1, LAST_EVENT_TIME_MS, longest, FAR_FUTURE, LIMITS)
    assert isinstance(fact, Fact)
    requests = requests_of([fact, fact], LIMITS.max_events_per_call, SMALLEST_MESSAGE)
    assert [request.ByteSize() <= SMALLEST_MESSAGE for request in requests] == [True, True]
