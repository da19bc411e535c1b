"""``ReserveRoom.bound`` is a bound: no answer a Reserve's reservation is given - its ReserveResponse,
replayed or not, its ReserveStream outcome, and the record Confirm, Release, Fulfill and
GetReservation answer in each state it can reach - is larger than it. A Reserve it lets through
whose answer is larger is held, made durable, then told ``OUTCOME_UNKNOWN`` (R7) at every retry.
Built by the real lifecycle (``reservation.reserve`` on a ledger) and ``convert``, for random
requests: ids up to ``max_id_length`` bytes of 1- to 4-byte characters, groups, oversold stock
(a negative number takes ten bytes), the largest quantities accepted. A group line not granted is
one line of the record under the group's name, longer than its members' (the example): its record
outgrew the bound, by as much as the name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from atp_service.edge.fits import ReserveRoom, check_settings, largest_id_length
from reservation import (
    Fact,
    FactKind,
    GroupPolicy,
    InvalidArgument,
    Ledger,
    Limits,
    LineRequest,
    Reservation,
    confirm,
    fulfill,
    release,
    reserve,
)
from reservation._limits import MAX_ON_HAND_CEILING, MAX_QUANTITY_CEILING

NOW = 1_764_000_000_000
"""Epoch ms (late 2025): a timestamp's seconds take five bytes, as for centuries to come."""
LIMITS = (Limits(), Limits(max_id_length=20, max_lines=40),
          Limits(max_id_length=300, max_quantity=MAX_QUANTITY_CEILING, max_on_hand=MAX_ON_HAND_CEILING))
CHARS = ["a", "Z", "7", "-", "é", "ж", "€", "中", "😀", "\U0001f680"]
"""1-, 2-, 3- and 4-byte UTF-8 characters (every one printable)."""


@st.composite
def an_id(draw: st.DrawFn, limits: Limits, prefix: str = "") -> str:
    """An id of at most ``max_id_length`` bytes, often the longest that fits."""
    text = prefix + "".join(draw(st.lists(st.sampled_from(CHARS), min_size=1, max_size=6)))
    text = (text * limits.max_id_length)[:draw(st.sampled_from([len(text), limits.max_id_length]))]
    while len(text.encode()) > limits.max_id_length:
        text = text[:-1]
    return text


@st.composite
def cases(draw: st.DrawFn) -> tuple[Limits, GroupPolicy | None, pb.ReserveRequest, dict[tuple[str, str], int]]:
    limits = draw(st.sampled_from(LIMITS))
    ids = st.sampled_from  # short alias below
    stores = draw(st.lists(an_id(limits, "s"), min_size=1, max_size=6, unique=True))
    groups = {draw(an_id(limits, "g")): tuple(draw(st.lists(ids(stores), min_size=1, max_size=6)))
              for _ in range(draw(st.integers(0, 2)))}
    groups = {name: members for name, members in groups.items() if name not in stores}
    policy = GroupPolicy(groups, draw(st.sampled_from(["priority", "most_available"]))) if groups else None
    skus = draw(st.lists(an_id(limits, "k"), min_size=1, max_size=3, unique=True))
    quantity = st.one_of(st.integers(1, 5), st.just(limits.max_quantity), st.integers(1, limits.max_quantity))
    lines = draw(st.lists(st.tuples(ids(skus), ids([*stores, *groups]), quantity), min_size=1,
                          max_size=min(limits.max_lines, 8)))
    # Available per position: none, some, all a line asks, or oversold (on_hand below 0, Q5).
    stock = {(sku, store): draw(st.sampled_from([0, 1, limits.max_quantity, -limits.max_quantity]))
             for sku in skus for store in stores}
    request = pb.ReserveRequest(reservation_id=draw(an_id(limits, "r")), order_ref=draw(an_id(limits)),
                                channel=draw(an_id(limits)), allow_partial=draw(st.booleans()),
                                lines=[pb.Line(sku=s, location=loc, quantity=q) for s, loc, q in lines])
    request.ttl.seconds = draw(st.sampled_from([limits.min_ttl_seconds, limits.max_ttl_seconds]))
    return limits, policy, request, stock


def stocked(stock: dict[tuple[str, str], int], limits: Limits) -> Ledger:
    ledger = Ledger(0, limits)
    for n, ((sku, store), units) in enumerate(stock.items()):
        kind = FactKind.RECEIPT if units >= 0 else FactKind.SALE
        if units:
            ledger.record_fact(Fact(f"f{n}", "test", kind, sku, store, abs(units), NOW - 1000))
    return ledger


def records(ledger: Ledger, rec: Reservation, limits: Limits) -> Iterator[Reservation]:
    """The reservation in each state it can reach with the most numbers set on its lines: held and
    released in part, then committed, fulfilled and released in part."""
    yield rec
    rid = rec.reservation_id
    if not rec.lines[0].held:
        return
    now = NOW + 1
    some = tuple(LineRequest(line.sku, line.location, 1) for line in rec.lines if line.held > 2)
    if some:
        yield (rec := release(ledger, rid, some, "rel-1", now, limits))
    yield (rec := confirm(ledger, rid, now))
    some = tuple(LineRequest(line.sku, line.location, 1) for line in rec.lines if line.committed > 1)
    if some:
        yield fulfill(ledger, rid, some, "ful-1", now, limits)


@settings(max_examples=150, deadline=None)
@given(cases())
@example((Limits(), GroupPolicy({"g" * 128: ("s",)}), pb.ReserveRequest(
    reservation_id="r", order_ref="o" * 128, channel="c" * 128, lines=[pb.Line(sku="k" * 128, location="g" * 128,
                                                                               quantity=1)]), {}))
def test_no_answer_of_a_reservation_is_larger_than_the_bound(
        case: tuple[Limits, GroupPolicy | None, pb.ReserveRequest, dict[tuple[str, str], int]]) -> None:
    limits, policy, request, stock = case
    assert_bounded(limits, policy, request, stock)


def test_the_bound_holds_where_lengths_take_three_bytes() -> None:
    """Ids of 20,000 bytes (``max_id_length`` may reach ~700,000 with 4 MiB messages): each string's
    length, and each line's, takes three bytes where the constants count two; a line's other numbers
    take fewer than counted."""
    limits = Limits(max_id_length=20_000, max_quantity=MAX_QUANTITY_CEILING, max_on_hand=MAX_ON_HAND_CEILING)
    long = [f"{n:02d}".ljust(20_000, "x") for n in range(12)]
    quantity = limits.max_quantity
    request = pb.ReserveRequest(reservation_id=long[0], order_ref=long[1], channel=long[2], allow_partial=True,
                                lines=[pb.Line(sku=sku, location=long[3], quantity=quantity) for sku in long[4:]])
    request.ttl.seconds = limits.max_ttl_seconds
    assert_bounded(limits, None, request, {(sku, long[3]): quantity for sku in long[4:]})
    group = GroupPolicy({"G": tuple(long[4:])})
    request = pb.ReserveRequest(reservation_id=long[0], order_ref=long[1], channel=long[2],
                                lines=[pb.Line(sku=long[3], location="G", quantity=quantity)])
    assert_bounded(limits, group, request, {(long[3], store): quantity // 8 + 1 for store in long[4:]})


def assert_bounded(limits: Limits, policy: GroupPolicy | None, request: pb.ReserveRequest,
                   stock: dict[tuple[str, str], int]) -> None:
    bound = ReserveRoom(limits, 4 << 20).bound(request, policy)
    ledger = stocked(stock, limits)
    try:
        cmd = convert.reserve_cmd(request, limits)
    except InvalidArgument:  # lines of a position summing past max_quantity: refused before the bound
        assume(False)
    rec, _ = reserve(ledger, cmd, NOW, policy)
    for replayed in (False, True):
        answer = convert.reserve_response(rec, replayed)
        outcome = pb.ReserveOutcome(reservation_id=request.reservation_id, response=answer)
        assert answer.ByteSize() <= outcome.ByteSize() <= bound, (outcome.ByteSize(), bound)
    for state in records(ledger, rec, limits):
        record = pb.GetReservationResponse(reservation=convert.reservation_pb(state))
        assert record.ByteSize() <= bound, (state.state, record.ByteSize(), bound)


def test_the_longest_ids_the_settings_accept_fit_one_line_of_a_reserve() -> None:
    """``max_id_length`` is bounded by ``max_message_bytes`` (``check_settings``): at the longest it
    accepts, a Reserve of one line of the longest ids is answered within the limit (``ReserveRoom``
    lets it through); one byte more could not be, and is refused naming both settings."""
    smallest = 64 << 10  # the lowest max_message_bytes accepted
    longest = largest_id_length(smallest)
    check_settings(Limits(max_id_length=longest), smallest)
    ids = [f"{n}".ljust(longest, "x") for n in range(5)]
    request = pb.ReserveRequest(reservation_id=ids[0], order_ref=ids[1], channel=ids[2],
                                lines=[pb.Line(sku=ids[3], location=ids[4], quantity=1)])
    room = ReserveRoom(Limits(max_id_length=longest), smallest)
    assert room.bound(request, None) <= smallest
    assert room._refusal(request, None) is None
    with pytest.raises(ValueError, match=r"^max_id_length: .*max_message_bytes=65536"):
        check_settings(Limits(max_id_length=longest + 1), smallest)
