"""Differential: a Reserve of one line converted and validated in one go (``convert.reserve_cmd``'s
fast branch, ``reserve_one_line``) gives the same command — or the same refusal, naming the same field
with the same reason — as the general path (``reserve_command`` over the lines as a tuple, which takes
no one-line shortcut, and ``ttl_seconds``); and a decision's unary answer (``reserve_answer``) is the
general one (``reserve_response``), byte for byte. Generated requests near every limit: ids empty,
long in characters or UTF-8 bytes, with control or unprintable characters; quantities and TTLs at and
past their bounds, TTLs with nanoseconds, unset, zero or negative."""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import convert
from reservation import DomainError, Limits, LineRecord, Outcome, Reservation, State, reserve_command

LIMITS = [Limits(), Limits(max_id_length=9, max_quantity=5, min_ttl_seconds=3, max_ttl_seconds=50,
                           default_ttl_seconds=10, max_on_hand=10),
          Limits(max_id_length=2, min_ttl_seconds=60, default_ttl_seconds=60)]
CHARS = st.sampled_from(["a", "Z", "1", "-", " ", "é", "\u00a0", "\u200b", "\x00", "\x7f", "\n", "😀", "\u2028"])
TEXT = st.one_of(st.text(CHARS, max_size=12), st.text(CHARS, min_size=30, max_size=40),
                 st.sampled_from(["", "r", "sku-1", "x" * 32, "x" * 33, "é" * 32, "é" * 33, "é" * 64, "é" * 65]))
QUANTITY = st.one_of(st.integers(-3, 8), st.sampled_from([0, 10**6, 10**6 + 1, -2**63, 2**63 - 1]))
SECONDS = st.one_of(st.integers(-3, 70), st.sampled_from([604_800, 604_801, 2**40, -2**40]))
TTL = st.one_of(st.none(), st.builds(Duration, seconds=SECONDS, nanos=st.sampled_from([0, 0, 1, -1, 999_999_999])))


def decided(call: Any) -> object:
    try:
        return ("ok", call())
    except DomainError as exc:
        return ("refused", type(exc).__name__, str(exc), exc.field, exc.reason, dict(exc.metadata))


@settings(max_examples=2000, deadline=None)
@given(rid=TEXT, order_ref=TEXT, channel=TEXT, sku=TEXT, location=TEXT, quantity=QUANTITY, ttl=TTL,
       partial=st.booleans(), which=st.integers(0, len(LIMITS) - 1))
def test_one_line_reserve_converts_as_the_general_path(rid: str, order_ref: str, channel: str, sku: str,
                                                       location: str, quantity: int, ttl: Duration | None,
                                                       partial: bool, which: int) -> None:
    limits = LIMITS[which]
    req = pb.ReserveRequest(reservation_id=rid, order_ref=order_ref, channel=channel, ttl=ttl, allow_partial=partial,
                            lines=[pb.Line(sku=sku, location=location, quantity=quantity)])
    fast = decided(lambda: convert.reserve_cmd(req, limits))
    general = decided(lambda: reserve_command(
        reservation_id=rid, order_ref=order_ref, channel=channel, lines=((sku, location, quantity),),
        ttl_seconds=convert.ttl_seconds(req), allow_partial=partial, limits=limits))
    assert fast == general


LINE = st.builds(LineRecord, sku=st.sampled_from(["A", "é"]), location=st.sampled_from(["S1", "S2"]),
                 requested=st.integers(1, 9), granted=st.integers(0, 9),
                 outcome=st.sampled_from([int(o) for o in Outcome]), available=st.integers(-5, 20),
                 held=st.integers(0, 9), committed=st.integers(0, 9), group=st.sampled_from(["", "", "G"]))
RECORD = st.builds(Reservation, reservation_id=st.sampled_from(["r1", "é" * 40]), order_ref=st.just("o"),
                   channel=st.just("web"), ttl_ms=st.integers(1_000, 10**9), allow_partial=st.booleans(),
                   state=st.sampled_from([int(s) for s in State]),
                   lines=st.lists(LINE, min_size=1, max_size=3).map(tuple),
                   created_at=st.integers(0, 2**45), expires_at=st.integers(0, 2**45), updated_at=st.integers(0, 2**45))


@settings(max_examples=1000, deadline=None)
@given(rec=RECORD, replayed=st.booleans())
def test_one_line_reserve_answer_is_the_general_answer(rec: Reservation, replayed: bool) -> None:
    fast, general = convert.reserve_answer((rec, replayed)), convert.reserve_response(rec, replayed)
    assert fast == general
    assert fast.SerializeToString(deterministic=True) == general.SerializeToString(deterministic=True)
