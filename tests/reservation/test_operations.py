"""The reservation lifecycle (R1-R5) on a single ledger, no I/O."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest

from reservation import (
    AlreadyExists,
    DomainError,
    Fact,
    FactKind,
    FailedPrecondition,
    InvalidArgument,
    Ledger,
    LedgerSnapshot,
    Limits,
    NotFound,
    Outcome,
    Reason,
    State,
    confirm,
    expire,
    fulfill,
    release,
    reserve,
    reserve_command,
)
from tests.reservation.helpers import LIMITS, cmd, ledger_with

NOW = 10_000


def test_reserve_holds_units_and_sums_lines_of_one_position_R1() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    rec, replayed = reserve(ledger, cmd("r1", ("A", "S1", 3), ("A", "S1", 4)), NOW)
    assert not replayed and rec.state == State.HELD
    assert [(line.requested, line.granted) for line in rec.lines] == [(7, 7)]
    q = ledger.quantities("A", "S1")
    assert (q.on_hand, q.reserved, q.available) == (10, 7, 3)
    assert rec.expires_at == NOW + 60_000


def test_all_or_nothing_refuses_every_line_when_one_does_not_fit_R2() -> None:
    ledger = ledger_with({("A", "S1"): 10, ("B", "S1"): 1})
    rec, _ = reserve(ledger, cmd("r1", ("A", "S1", 5), ("B", "S1", 2)), NOW)
    assert rec.state == State.REJECTED
    assert [line.outcome for line in rec.lines] == [Outcome.NOT_ATTEMPTED, Outcome.INSUFFICIENT]
    assert rec.lines[1].available == 1
    assert ledger.quantities("A", "S1").reserved == 0  # nothing applied


def test_allow_partial_decides_each_line_alone_R2() -> None:
    ledger = ledger_with({("A", "S1"): 10, ("B", "S1"): 1})
    rec, _ = reserve(ledger, cmd("r1", ("A", "S1", 5), ("B", "S1", 2), partial=True), NOW)
    assert rec.state == State.HELD
    assert [line.granted for line in rec.lines] == [5, 0]
    assert ledger.quantities("B", "S1").reserved == 0


def test_safety_stock_is_never_offered_Q4_Q5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    ledger.set_safety_stock("A", "S1", 8)
    assert reserve(ledger, cmd("r1", ("A", "S1", 3)), NOW)[0].state == State.REJECTED
    assert reserve(ledger, cmd("r2", ("A", "S1", 2)), NOW)[0].state == State.HELD


def test_same_id_same_content_replays_even_a_refusal_R5() -> None:
    ledger = ledger_with({("A", "S1"): 1})
    first, _ = reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)
    assert first.state == State.REJECTED
    # More stock arrives; the retry must still return the original refusal.
    ledger.record_fact(Fact("more", "wms", FactKind.RECEIPT, "A", "S1", 5, 2_000))
    assert ledger.quantities("A", "S1").available == 6
    again, replayed = reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW + 5)
    assert replayed and again is first and again.state == State.REJECTED
    assert ledger.quantities("A", "S1").reserved == 0


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"order_ref": "other"}, "order_ref"),
        ({"channel": "app"}, "channel"),
    ],
)
def test_same_id_different_content_names_the_field_R5(changed: dict[str, str], field: str) -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)
    with pytest.raises(AlreadyExists) as err:
        reserve(ledger, cmd("r1", ("A", "S1", 2), **changed), NOW)
    assert err.value.field == field


def test_same_id_different_lines_or_ttl_names_the_field_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)
    with pytest.raises(AlreadyExists) as err:
        reserve(ledger, cmd("r1", ("A", "S1", 3)), NOW)
    assert (err.value.reason, err.value.fields) == (Reason.RESERVATION_ID_REUSED, ("lines",))
    with pytest.raises(AlreadyExists) as err:
        reserve(ledger, cmd("r1", ("A", "S1", 2), ttl=61), NOW)
    assert (err.value.reason, err.value.fields) == (Reason.RESERVATION_ID_REUSED, ("ttl",))


def test_a_retry_leaving_the_ttl_unset_is_the_same_request_after_the_default_changed_R5() -> None:
    """R5 compares the request as sent: a TTL left unset both times matches, though the service
    restarted meanwhile with another ``default_ttl_seconds`` (it was refused ``ttl`` differs)."""
    ledger = ledger_with({("A", "S1"): 10})
    first = reserve(ledger, reserve_command(reservation_id="r1", order_ref="", channel="", lines=[("A", "S1", 2)],
                                            ttl_seconds=0, allow_partial=False, limits=LIMITS), NOW)[0]
    later = replace(LIMITS, default_ttl_seconds=LIMITS.default_ttl_seconds * 2)
    retry = reserve_command(reservation_id="r1", order_ref="", channel="", lines=[("A", "S1", 2)], ttl_seconds=0,
                            allow_partial=False, limits=later)
    assert reserve(ledger, retry, NOW + 5)[0] == first
    assert ledger.quantities("A", "S1").reserved == 2
    explicit = reserve_command(reservation_id="r1", order_ref="", channel="", lines=[("A", "S1", 2)],
                               ttl_seconds=later.default_ttl_seconds, allow_partial=False, limits=later)
    with pytest.raises(AlreadyExists) as err:  # a TTL named, other than the one applied: still refused
        reserve(ledger, explicit, NOW + 5)
    assert err.value.fields == ("ttl",)


def test_confirm_moves_held_to_committed_and_stops_expiry_R3() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    rec = confirm(ledger, "r1", NOW + 1)
    assert rec.state == State.CONFIRMED and rec.expires_at == 0
    q = ledger.quantities("A", "S1")
    assert (q.reserved, q.committed, q.available) == (0, 4, 6)
    assert confirm(ledger, "r1", NOW + 2) is rec  # a retry is harmless
    assert expire(ledger, "r1", NOW + 10**9) is None


def test_expiry_releases_held_units_and_blocks_confirm_R3() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4), ttl=1), NOW)
    assert ledger.due(NOW + 999) == []
    assert ledger.due(NOW + 1000) == ["r1"]
    rec = expire(ledger, "r1", NOW + 1000)
    assert rec is not None and rec.state == State.EXPIRED
    assert ledger.quantities("A", "S1").reserved == 0
    with pytest.raises(FailedPrecondition) as err:
        confirm(ledger, "r1", NOW + 2000)
    assert (err.value.state, err.value.reason, err.value.subject) == ("EXPIRED", Reason.RESERVATION_EXPIRED, "r1")


def test_confirm_after_ttl_without_tick_expires_first_R3() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4), ttl=1), NOW)
    with pytest.raises(FailedPrecondition) as err:
        confirm(ledger, "r1", NOW + 5000)
    assert err.value.reason == Reason.RESERVATION_EXPIRED
    assert ledger.quantities("A", "S1").reserved == 0


def test_partial_release_then_full_release_R3() -> None:
    ledger = ledger_with({("A", "S1"): 10, ("B", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4), ("B", "S1", 2)), NOW)
    rec = release(ledger, "r1", (cmd("x", ("A", "S1", 1)).lines), "op-1", NOW, LIMITS)
    assert rec.state == State.HELD and rec.lines[0].held == 3 and rec.lines[0].released == 1
    # Retrying the same operation is harmless (R5).
    assert release(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "op-1", NOW, LIMITS) is rec
    assert ledger.quantities("A", "S1").reserved == 3
    with pytest.raises(AlreadyExists) as err:
        release(ledger, "r1", cmd("x", ("A", "S1", 2)).lines, "op-1", NOW, LIMITS)
    assert (err.value.reason, err.value.fields) == (Reason.OPERATION_ID_REUSED, ("operation_id",))
    final = release(ledger, "r1", (), "", NOW, LIMITS)
    assert final.state == State.RELEASED
    assert ledger.quantities("A", "S1").reserved == 0 and ledger.quantities("B", "S1").reserved == 0
    assert release(ledger, "r1", (), "", NOW, LIMITS) is final  # harmless retry


def test_an_operation_id_used_by_a_fulfilment_is_not_taken_for_a_release_of_the_same_lines_R5() -> None:
    # A release naming a fulfilment's operation id is other content (the operation differs): were it
    # answered as that fulfilment's retry, the caller would be told OK and no unit released.
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    one = cmd("x", ("A", "S1", 1)).lines
    fulfill(ledger, "r1", one, "op-1", NOW, LIMITS)
    with pytest.raises(AlreadyExists) as err:
        release(ledger, "r1", one, "op-1", NOW, LIMITS)
    assert (err.value.reason, err.value.fields) == (Reason.OPERATION_ID_REUSED, ("operation_id",))
    release(ledger, "r1", one, "op-2", NOW, LIMITS)
    with pytest.raises(AlreadyExists) as err:
        fulfill(ledger, "r1", one, "op-2", NOW, LIMITS)
    assert err.value.reason == Reason.OPERATION_ID_REUSED
    q = ledger.quantities("A", "S1")
    assert (q.on_hand, q.committed) == (9, 2)
    assert fulfill(ledger, "r1", one, "op-1", NOW, LIMITS).lines[0].fulfilled == 1  # its own retry replays


def test_lines_whose_ids_hold_the_separators_are_other_lines_of_an_operation_R5() -> None:
    # "a|b"@"c" and "a"@"b|c" are two positions: a partial release of one under an id used for the
    # other must not be answered as a retry (OK, nothing released).
    ledger = ledger_with({("a|b", "c"): 5, ("a", "b|c"): 5})
    reserve(ledger, cmd("r1", ("a|b", "c", 2), ("a", "b|c", 2)), NOW)
    release(ledger, "r1", cmd("x", ("a|b", "c", 1)).lines, "op-1", NOW, LIMITS)
    with pytest.raises(AlreadyExists) as err:
        release(ledger, "r1", cmd("x", ("a", "b|c", 1)).lines, "op-1", NOW, LIMITS)
    assert err.value.reason == Reason.OPERATION_ID_REUSED
    assert ledger.quantities("a", "b|c").reserved == 2


def test_an_operation_recorded_before_operations_named_their_kind_is_still_retried_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    one = cmd("x", ("A", "S1", 1)).lines
    rec = release(ledger, "r1", one, "op-1", NOW, LIMITS)
    rec.ops["op-1"] = "A|S1|1"  # as a snapshot of an earlier version holds it
    assert release(ledger, "r1", one, "op-1", NOW, LIMITS).lines[0].released == 1
    with pytest.raises(AlreadyExists):
        release(ledger, "r1", cmd("x", ("A", "S1", 2)).lines, "op-1", NOW, LIMITS)


def test_partial_operations_are_bounded_per_reservation_and_a_whole_release_still_works() -> None:
    limits = Limits(max_ops_per_reservation=2)
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 5)), NOW)
    one = cmd("x", ("A", "S1", 1)).lines
    release(ledger, "r1", one, "op-1", NOW, limits)
    release(ledger, "r1", one, "op-2", NOW, limits)
    assert release(ledger, "r1", one, "op-2", NOW, limits).lines[0].released == 2  # a retry is not a new one
    with pytest.raises(DomainError) as err:
        release(ledger, "r1", one, "op-3", NOW, limits)
    assert (err.value.reason, err.value.fields, err.value.metadata) == (
        Reason.OPERATION_LIMIT_REACHED, ("operation_id",), {"limit": "max_ops_per_reservation"})
    assert release(ledger, "r1", (), "", NOW, limits).state == State.RELEASED


def test_release_more_than_outstanding_names_the_line() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)
    with pytest.raises(InvalidArgument) as err:
        release(ledger, "r1", cmd("x", ("A", "S1", 3)).lines, "op", NOW, LIMITS)
    assert err.value.field == "lines[0].quantity"
    with pytest.raises(InvalidArgument) as err:
        release(ledger, "r1", cmd("x", ("B", "S1", 1)).lines, "op", NOW, LIMITS)
    assert err.value.field == "lines[0]"
    assert ledger.quantities("A", "S1").reserved == 2


def test_fulfil_lowers_committed_and_on_hand_together_R4() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    with pytest.raises(FailedPrecondition) as err:
        fulfill(ledger, "r1", (), "", NOW, LIMITS)
    assert (err.value.reason, err.value.state) == (Reason.RESERVATION_NOT_CONFIRMED, "HELD")
    confirm(ledger, "r1", NOW)
    rec = fulfill(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "ship-1", NOW + 1, LIMITS)
    assert rec.state == State.CONFIRMED
    q = ledger.quantities("A", "S1")
    assert (q.on_hand, q.committed, q.available) == (9, 3, 6)
    rec = fulfill(ledger, "r1", (), "", NOW + 2, LIMITS)
    assert rec.state == State.FULFILLED
    q = ledger.quantities("A", "S1")
    assert (q.on_hand, q.committed, q.available) == (6, 0, 6)
    with pytest.raises(FailedPrecondition) as err:
        release(ledger, "r1", (), "", NOW + 3, LIMITS)
    assert (err.value.reason, err.value.state) == (Reason.RESERVATION_FULFILLED, "FULFILLED")


def test_partly_shipped_then_released_ends_fulfilled() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    fulfill(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "ship-1", NOW, LIMITS)
    rec = release(ledger, "r1", (), "", NOW, LIMITS)
    assert rec.state == State.FULFILLED and rec.lines[0].released == 3


def test_a_whole_release_retried_after_it_settled_a_partly_shipped_reservation_is_answered_as_before_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    fulfill(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "ship-1", NOW, LIMITS)
    first = release(ledger, "r1", (), "", NOW, LIMITS)
    ledger.commit(NOW)
    again = release(ledger, "r1", (), "", NOW + 5, LIMITS)
    assert again == first and not ledger.pending  # the same answer, nothing changed or logged
    q = ledger.quantities("A", "S1")
    assert (q.on_hand, q.reserved, q.committed) == (9, 0, 0)


def test_a_whole_release_after_a_fulfilment_settled_a_partly_released_reservation_is_refused_R3() -> None:
    # Units released by operation, the rest shipped whole: the fulfilment resolved it. A whole Release
    # now is a second, conflicting resolution (no release settled it), not a retry: refused naming FULFILLED.
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    release(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "rel-1", NOW, LIMITS)
    shipped = fulfill(ledger, "r1", (), "", NOW + 1, LIMITS)
    assert shipped.state == State.FULFILLED and shipped.lines[0].released == 1
    ledger.commit(NOW + 1)
    with pytest.raises(FailedPrecondition) as err:
        release(ledger, "r1", (), "", NOW + 2, LIMITS)
    assert (err.value.reason, err.value.state) == (Reason.RESERVATION_FULFILLED, "FULFILLED")
    assert not ledger.pending


def _restored(ledger: Ledger) -> Ledger:
    """``ledger`` as a restart finds it: its snapshot, encoded and restored (R5: answered alike)."""
    data = msgspec.msgpack.encode(ledger.snapshot())
    return Ledger.restore(0, LIMITS, msgspec.msgpack.decode(data, type=LedgerSnapshot))


@pytest.mark.parametrize("by_operation", [False, True], ids=["whole", "by-operation"])
def test_a_whole_fulfil_after_a_release_settled_a_partly_shipped_reservation_is_refused_R3(by_operation: bool) -> None:
    # One unit shipped, the rest released: the release resolved it (FULFILLED: something shipped). A whole
    # Fulfil now is a second, conflicting resolution (no fulfilment settled it), not a retry: refused
    # naming the state, as a Release after a fulfilment settled it is. The release's own retry is answered.
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    fulfill(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "ship-1", NOW, LIMITS)
    rest = cmd("x", ("A", "S1", 3)).lines if by_operation else ()
    settled = release(ledger, "r1", rest, "rel-3" if by_operation else "", NOW + 1, LIMITS)
    assert settled.state == State.FULFILLED and settled.lines[0].released == 3
    ledger.commit(NOW + 1)
    for at in (ledger, _restored(ledger)):
        with pytest.raises(FailedPrecondition) as err:
            fulfill(at, "r1", (), "", NOW + 2, LIMITS)
        assert (err.value.reason, err.value.state) == (Reason.RESERVATION_FULFILLED, "FULFILLED")
        with pytest.raises(FailedPrecondition):
            fulfill(at, "r1", (), "ship-rest", NOW + 2, LIMITS)  # an id of its own changes nothing
        assert release(at, "r1", (), "", NOW + 3, LIMITS) == settled  # R5: a release settled it
        assert not at.pending
        q = at.quantities("A", "S1")
        assert (q.on_hand, q.reserved, q.committed) == (9, 0, 0)


def test_a_whole_fulfil_retried_after_it_settled_a_partly_released_reservation_is_answered_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    release(ledger, "r1", cmd("x", ("A", "S1", 1)).lines, "rel-1", NOW, LIMITS)
    shipped = fulfill(ledger, "r1", (), "", NOW + 1, LIMITS)
    assert shipped.state == State.FULFILLED
    ledger.commit(NOW + 1)
    for at in (ledger, _restored(ledger)):
        assert fulfill(at, "r1", (), "", NOW + 2, LIMITS) == shipped and not at.pending
        q = at.quantities("A", "S1")
        assert (q.on_hand, q.reserved, q.committed) == (7, 0, 0)


def test_unknown_reservation_is_not_found() -> None:
    ledger = ledger_with({})
    with pytest.raises(NotFound) as err:
        confirm(ledger, "nope", NOW)
    assert err.value.reason == Reason.RESERVATION_NOT_FOUND


def test_rollback_restores_everything_of_the_open_batch_R7() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    before = ledger.quantities("A", "S1")
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    confirm(ledger, "r1", NOW)
    ledger.rollback()
    assert ledger.quantities("A", "S1") == before
    assert ledger.reservation("r1") is None
    assert list(ledger.holds_at("A", "S1")) == []
    assert not ledger.pending


def test_late_sale_can_oversell_and_it_is_counted_not_hidden_Q5() -> None:
    ledger = ledger_with({("A", "S1"): 2})
    reserve(ledger, cmd("r1", ("A", "S1", 2)), NOW)
    ledger.record_fact(Fact("late-sale", "pos", FactKind.SALE, "A", "S1", 1, 900))
    q = ledger.quantities("A", "S1")
    assert q.available == -1
    assert ledger.store.oversold_units() == 1


def test_safety_stock_above_on_hand_is_not_counted_as_oversold_Q4_Q5() -> None:
    ledger = ledger_with({("A", "S1"): 1})
    ledger.set_safety_stock("A", "S1", 3)
    ledger.commit(NOW)
    assert ledger.quantities("A", "S1").available == -2  # nothing can be promised...
    assert ledger.store.oversold_units() == 0  # ...but nothing was promised beyond what is there


def test_a_whole_release_under_an_operation_id_is_named_as_a_release_when_the_id_is_reused_R5() -> None:
    ledger = ledger_with({("A", "S1"): 10})
    reserve(ledger, cmd("r1", ("A", "S1", 4)), NOW)
    release(ledger, "r1", (), "op-1", NOW, LIMITS)
    with pytest.raises(AlreadyExists, match="a release, not a fulfilment") as err:
        fulfill(ledger, "r1", (), "op-1", NOW, LIMITS)
    assert err.value.reason == Reason.OPERATION_ID_REUSED
    assert release(ledger, "r1", (), "op-1", NOW, LIMITS).state == State.RELEASED  # its own retry replays
