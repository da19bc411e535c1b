"""Orders spanning groups (``_orders``), no I/O: each group a Ledger of its own, the saga's steps
run by hand as the engine runs them — all or nothing (R2), every step a replay when repeated (R5),
expiry only through the order (R3)."""

from __future__ import annotations

import dataclasses

import pytest

from reservation import (
    AlreadyExists,
    Fact,
    FactKind,
    FactOutcome,
    FailedPrecondition,
    InvalidArgument,
    Ledger,
    LineRecord,
    LineRequest,
    OrderStep,
    Outcome,
    PendingOp,
    Reservation,
    ReserveCommand,
    State,
    reserve,
)
from reservation import _order_shipments as order_shipments
from reservation import _orders as orders
from reservation._operations import fulfill, fulfill_committed
from tests.reservation.helpers import LIMITS, cmd, ledger_with

NOW = 10_000
GROUP = {"A": 0, "B": 1, "C": 1}


def place(sku: str) -> int:
    return GROUP[sku]


class Estate:
    """Group 0 stocks A, group 1 stocks B and C."""

    def __init__(self, a: int = 10, b: int = 10, c: int = 10) -> None:
        self.ledgers = {0: ledger_with({("A", "S1"): a}), 1: ledger_with({("B", "S1"): b, ("C", "S1"): c})}

    def reserve_parts(self, command: ReserveCommand) -> dict[int, Reservation]:
        return {g: reserve(self.ledgers[g], part, NOW)[0] for g, part in orders.split(command, place).items()}

    def parts(self, order: Reservation) -> dict[int, Reservation]:
        found = {g: self.ledgers[g].reservation(orders.part_id(order.reservation_id, g)) for g in order.parts}
        assert all(p is not None for p in found.values())
        return found  # type: ignore[return-value]

    def apply(self, order: Reservation, shares: dict[int, PendingOp], now: int = NOW) -> None:
        for g, share in shares.items():
            orders.apply_share(self.ledgers[g], orders.part_id(order.reservation_id, g), share, now, LIMITS)

    def held(self, sku: str) -> int:
        return self.ledgers[place(sku)].quantities(sku, "S1").reserved

    def committed(self, sku: str) -> int:
        return self.ledgers[place(sku)].quantities(sku, "S1").committed


def reserved_order(estate: Estate, command: ReserveCommand) -> Reservation:
    """The whole Reserve saga: open, reserve the parts, release held ones if refused, decide."""
    order = orders.open_order(command, tuple(sorted({place(line.sku) for line in command.lines})), NOW)
    parts = estate.reserve_parts(command)
    decided, release = orders.decide(order, parts, NOW)
    if decided is None:
        estate.apply(order, {g: PendingOp(OrderStep.RELEASE) for g in release})
        decided, release = orders.decide(order, estate.parts(order), NOW)
        assert decided is not None and not release
    return decided


def changed(estate: Estate, order: Reservation, step: PendingOp, now: int = NOW) -> Reservation:
    """A change of a decided order: plan on the parts' view, apply the shares, settle."""
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), step, now, LIMITS, place)
    if error is not None:
        raise error
    assert done is not None and done.pending == step
    estate.apply(order, shares, now)
    estate.apply(order, shares, now)  # a repeat after a crash: every share is a replay
    return orders.settled(done, now)


def test_a_part_id_names_its_order_and_no_caller_can_send_one() -> None:
    pid = orders.part_id("o-1", 3)
    assert orders.order_of(pid) == "o-1" and orders.order_of("o-1") is None
    assert not pid.isprintable()  # check_id refuses it on every request


def test_parts_split_the_lines_by_group_in_order_and_never_expire() -> None:
    parts = orders.split(cmd("o", ("B", "S1", 1), ("A", "S1", 2), ("C", "S1", 3)), place)
    assert [(g, [line.sku for line in p.lines]) for g, p in parts.items()] == [(0, ["A"]), (1, ["B", "C"])]
    assert all(p.ttl_ms == orders.PART_TTL_MS for p in parts.values())


def test_every_part_holding_makes_the_order_held_with_the_lines_in_its_order_R2() -> None:
    estate = Estate()
    order = reserved_order(estate, cmd("o", ("B", "S1", 2), ("A", "S1", 3)))
    assert order.state == State.HELD and order.pending is None and order.expires_at == NOW + 60_000
    assert [(line.sku, line.granted) for line in order.lines] == [("B", 2), ("A", 3)]
    assert (estate.held("A"), estate.held("B")) == (3, 2)


def test_one_part_short_releases_the_others_and_refuses_the_order_R2() -> None:
    estate = Estate(b=1)
    order = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2)))
    assert order.state == State.REJECTED and order.expires_at == 0
    assert [(line.sku, line.outcome) for line in order.lines] == [("A", Outcome.NOT_ATTEMPTED),
                                                                  ("B", Outcome.INSUFFICIENT)]
    assert (estate.held("A"), estate.held("B")) == (0, 0)  # nothing outlives the decision


def test_allow_partial_keeps_what_each_part_granted() -> None:
    estate = Estate(b=1)
    order = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2), partial=True))
    assert order.state == State.HELD
    assert [line.granted for line in order.lines] == [3, 0] and estate.held("A") == 3


def test_a_retry_with_other_content_is_refused_naming_the_field_R5() -> None:
    order = orders.open_order(cmd("o", ("A", "S1", 3), ("B", "S1", 2)), (0, 1), NOW)
    orders.same_order(order, cmd("o", ("A", "S1", 3), ("B", "S1", 2)))
    with pytest.raises(AlreadyExists, match="lines"):
        orders.same_order(order, cmd("o", ("A", "S1", 3), ("B", "S1", 1)))


def test_confirm_release_and_fulfil_reach_every_part_once() -> None:
    estate = Estate()
    order = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2)))
    order = changed(estate, order, PendingOp(OrderStep.CONFIRM))
    assert order.state == State.CONFIRMED and (estate.committed("A"), estate.committed("B")) == (3, 2)
    order = changed(estate, order, PendingOp(OrderStep.RELEASE, (LineRequest("A", "S1", 1),), "r1"))
    order = changed(estate, order, PendingOp(OrderStep.FULFIL, (), ""))
    shown = orders.view(order, estate.parts(order))
    assert shown.state == State.FULFILLED
    assert [(line.sku, line.fulfilled, line.released) for line in shown.lines] == [("A", 2, 1), ("B", 2, 0)]
    assert estate.ledgers[0].quantities("A", "S1").on_hand == 8  # shipped once, the repeat a replay


def test_a_change_checked_against_what_the_parts_hold_is_refused_whole() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    step = PendingOp(OrderStep.RELEASE, (LineRequest("A", "S1", 1), LineRequest("B", "S1", 5)), "r1")
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), step, NOW, LIMITS, place)
    assert isinstance(error, InvalidArgument) and done is None and not shares
    assert estate.committed("A") == 3  # nothing of it applied anywhere


def test_an_order_past_its_ttl_expires_through_every_part_even_when_a_command_finds_it_R3() -> None:
    estate = Estate()
    order = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2)))
    late = order.expires_at
    assert estate.parts(order)[0].expires_at > late + 10**12  # a part never expires by itself
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), PendingOp(OrderStep.CONFIRM),
                                      late, LIMITS, place)
    assert isinstance(error, FailedPrecondition) and "EXPIRED" in str(error)
    assert done is not None and done.state == State.EXPIRED and done.pending == PendingOp(OrderStep.EXPIRE)
    estate.apply(order, shares, late)
    assert (estate.held("A"), estate.held("B")) == (0, 0)


def test_a_confirmed_order_is_never_expired() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), PendingOp(OrderStep.EXPIRE),
                                      order.updated_at + 10**9, LIMITS, place)
    assert (done, shares, error) == (None, {}, None)
    assert estate.committed("A") == 3


def test_a_retried_change_plans_nothing_R5() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    assert orders.plan(orders.view(order, estate.parts(order)), PendingOp(OrderStep.CONFIRM), NOW, LIMITS,
                       place) == (None, {}, None)


def test_units_fulfilled_by_shipment_facts_on_the_parts_settle_the_order() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    for g, (sku, qty) in ((0, ("A", 3)), (1, ("B", 2))):
        part = orders.part_id("o", g)
        orders.apply_share(estate.ledgers[g], part, PendingOp(OrderStep.FULFIL, (LineRequest(sku, "S1", qty),),
                                                              f"fact:{sku}"), NOW, LIMITS)
    assert orders.view(order, estate.parts(order)).state == State.FULFILLED


def test_a_part_carries_its_share_through_what_a_shipment_took_meanwhile_R3() -> None:
    """SHIPMENT facts fulfil a part at its owner, outside the order's saga: between the saga's read of
    the parts and its shares, a part may have fewer units (or none) left than the order decided to move.
    The share moves what is left and never refuses: the order's change is recorded pending already,
    and a refusal would be met again by every later change, read and expiry of the order."""
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    step = PendingOp(OrderStep.FULFIL, (LineRequest("A", "S1", 2), LineRequest("B", "S1", 1)), "f1")
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), step, NOW, LIMITS, place)
    assert error is None and done is not None
    for g, (sku, qty) in ((0, ("A", 2)), (1, ("B", 2))):  # the facts, after the plan
        orders.apply_share(estate.ledgers[g], orders.part_id("o", g), PendingOp(
            OrderStep.FULFIL, (LineRequest(sku, "S1", qty),), f"fact:{sku}"), NOW, LIMITS)
    estate.apply(order, shares)
    estate.apply(order, shares)  # a repeat: a replay
    shown = orders.view(orders.settled(done, NOW), estate.parts(order))
    assert [(line.sku, line.committed, line.fulfilled) for line in shown.lines] == [("A", 0, 3), ("B", 0, 2)]
    assert (estate.committed("A"), estate.committed("B")) == (0, 0)
    assert shown.state == State.FULFILLED


def test_the_order_record_holds_no_units_and_round_trips_through_the_log() -> None:
    order = orders.open_order(cmd("o", ("A", "S1", 3), ("B", "S1", 2)), (0, 1), NOW)
    ledger = Ledger(0, LIMITS)
    ledger.save(order)
    entry = ledger.commit(NOW)
    again = Ledger(0, LIMITS)
    again.replay(entry)
    assert again.reservation("o") == order and again.reservation("o").is_order  # type: ignore[union-attr]
    assert again.quantities("A", "S1").reserved == 0


def test_a_resolved_order_whose_parts_were_forgotten_shows_its_own_record() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.RELEASE))
    assert orders.view(order, {}).state == State.RELEASED  # retention forgot the parts first
    assert not any(line.outstanding for line in orders.view(order, {}).lines)


def test_a_whole_fulfil_with_an_operation_id_is_carried_through_a_part_at_its_op_limit_R3() -> None:
    """A part's record may hold operations of its own (recorded on the part alone, as earlier logs have
    SHIPMENT facts'): a part can reach max_ops_per_reservation while its order is far below it. A
    whole Fulfil sent with an operation_id is accepted by the order (its own count checked), recorded
    pending, and its share must not be refused by the part's count: a refusal leaves the order pending
    for good, every later change, read and expiry refused the same way, the part's units committed for
    good."""
    limits = dataclasses.replace(LIMITS, max_ops_per_reservation=2)
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    for n in (1, 2):  # two operations recorded on part A alone (the part's limit)
        fulfill(estate.ledgers[0], orders.part_id("o", 0), (LineRequest("A", "S1", 1),), f"fact:{n}", NOW, limits,
                ship=False)
    step = PendingOp(OrderStep.FULFIL, (), "w1")  # the rest, whole, with an operation id
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), step, NOW, limits, place)
    assert error is None and done is not None and done.pending == step
    for _ in range(2):  # and a repeat
        for g, share in shares.items():
            orders.apply_share(estate.ledgers[g], orders.part_id("o", g), share, NOW, limits)
    shown = orders.view(orders.settled(done, NOW), estate.parts(order))
    assert (estate.committed("A"), estate.committed("B")) == (0, 0)
    assert shown.state == State.FULFILLED


def test_a_whole_release_retried_is_answered_and_one_after_the_order_was_fulfilled_is_refused_R3_R5() -> None:
    estate = Estate()
    shipped_part = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                           PendingOp(OrderStep.CONFIRM))
    shipped_part = changed(estate, shipped_part, PendingOp(OrderStep.FULFIL, (LineRequest("A", "S1", 1),), "f1"))
    released = changed(estate, shipped_part, PendingOp(OrderStep.RELEASE))  # settles it FULFILLED: A shipped
    assert orders.view(released, estate.parts(released)).state == State.FULFILLED
    again = orders.plan(orders.view(released, estate.parts(released)), PendingOp(OrderStep.RELEASE), NOW + 1,
                        LIMITS, place)
    assert again == (None, {}, None)  # a retry (R5): answered, nothing planned
    other = Estate()
    order = changed(other, reserved_order(other, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    order = changed(other, order, PendingOp(OrderStep.RELEASE, (LineRequest("A", "S1", 1),), "r1"))
    order = changed(other, order, PendingOp(OrderStep.FULFIL))  # the fulfilment resolved it
    done, shares, error = orders.plan(orders.view(order, other.parts(order)), PendingOp(OrderStep.RELEASE),
                                      NOW + 1, LIMITS, place)
    assert isinstance(error, FailedPrecondition) and error.state == "FULFILLED" and done is None and not shares


def test_a_whole_fulfil_of_an_order_a_release_settled_is_refused_and_its_own_retry_answered_R3_R5() -> None:
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    order = changed(estate, order, PendingOp(OrderStep.FULFIL, (LineRequest("A", "S1", 1),), "f1"))
    released = changed(estate, order, PendingOp(OrderStep.RELEASE))  # settles it FULFILLED: A shipped
    assert orders.view(released, estate.parts(released)).state == State.FULFILLED
    done, shares, error = orders.plan(orders.view(released, estate.parts(released)), PendingOp(OrderStep.FULFIL),
                                      NOW + 1, LIMITS, place)
    assert isinstance(error, FailedPrecondition) and error.state == "FULFILLED" and done is None and not shares
    other = Estate()
    order = changed(other, reserved_order(other, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    order = changed(other, order, PendingOp(OrderStep.RELEASE, (LineRequest("A", "S1", 1),), "r1"))
    shipped = changed(other, order, PendingOp(OrderStep.FULFIL))  # the fulfilment resolved it
    again = orders.plan(orders.view(shipped, other.parts(shipped)), PendingOp(OrderStep.FULFIL), NOW + 1,
                        LIMITS, place)
    assert again == (None, {}, None)  # a retry (R5): answered, nothing planned


def test_a_held_order_missing_a_part_shows_nothing_of_it_shipped_and_a_release_answers_released_R3_R5() -> None:
    """A held order's parts are never committed (its Confirm records it CONFIRMED first), so no SHIPMENT fact can
    have fulfilled one: a part missing from a held order (Redis lost it, ``lost_parts``) shipped nothing. Shown as
    shipped, a Release of the order answered and recorded FULFILLED (R5: RELEASED, nothing shipped)."""
    estate = Estate()
    order = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2)))
    parts = {0: estate.parts(order)[0]}  # group 1's part gone
    shown = orders.view(order, parts)
    assert shown.state == State.HELD
    assert [(line.sku, line.fulfilled) for line in shown.lines] == [("A", 0), ("B", 0)]
    done, _, error = orders.plan(shown, PendingOp(OrderStep.RELEASE), NOW, LIMITS, place)
    assert error is None and done is not None and done.state == State.RELEASED


def test_a_partial_release_a_shipment_overtook_is_not_taken_for_released_once_the_part_is_forgotten_R5() -> None:
    """A SHIPMENT fact at another process fulfils a part between the order's plan of a partial Release of that
    part's line and its share (``_partial_share`` moves what is left: nothing). The order must not keep the release
    it planned as what happened: once the part, resolved FULFILLED, is forgotten, its units shipped (R5)."""
    estate = Estate()
    order = changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2))),
                    PendingOp(OrderStep.CONFIRM))
    step = PendingOp(OrderStep.RELEASE, (LineRequest("B", "S1", 2),), "r1")
    done, shares, error = orders.plan(orders.view(order, estate.parts(order)), step, NOW, LIMITS, place)
    assert error is None and done is not None
    fulfill_committed(estate.ledgers[1], orders.part_id("o", 1), (LineRequest("B", "S1", 2),), NOW, LIMITS)
    estate.apply(done, shares)
    parts = estate.parts(order)
    assert parts[1].state == State.FULFILLED
    settled = orders.settled(done, NOW, parts)
    shown = orders.view(settled, {0: parts[0]})  # group 1's part forgotten after its retention
    assert [(line.sku, line.fulfilled) for line in shown.lines] == [("A", 0), ("B", 2)]
    released, _, error = orders.plan(shown, PendingOp(OrderStep.RELEASE), NOW, LIMITS, place)
    assert error is None and released is not None and released.state == State.FULFILLED


def test_an_order_given_up_keeps_its_group_lines_so_an_exact_retry_replays_it_R5() -> None:
    """A decided order given up (a part refused or lost) was recorded with its lines rebuilt at their member
    locations, their location group dropped: an exact retry of its Reserve naming the group was then refused
    RESERVATION_ID_REUSED (lines) instead of answered with the recorded outcome (R5)."""
    asked = ReserveCommand("o", "ref", "web", (LineRequest("A", "G", 5), LineRequest("B", "S1", 1)), 60_000, False)
    decided = Reservation("o", "ref", "web", 60_000, False, State.HELD, (
        LineRecord("A", "L1", 3, 3, Outcome.GRANTED, 3, held=3, group="G"),
        LineRecord("A", "L2", 2, 2, Outcome.GRANTED, 2, held=2, group="G"),
        LineRecord("B", "S1", 1, 1, Outcome.GRANTED, 1, held=1)), NOW, NOW + 60_000, NOW, parts=(0, 1))
    orders.same_order(decided, asked)  # the decided order: the same request
    given_up = orders.abandoned(decided, NOW + 1)
    assert given_up.state == State.EXPIRED and all(line.granted == 0 for line in given_up.lines)
    orders.same_order(given_up, asked)  # refused RESERVATION_ID_REUSED before


def test_a_part_shipped_by_more_facts_than_max_ops_per_reservation_is_fulfilled_by_each_R4_E8() -> None:
    """Each SHIPMENT fact naming the order fulfils its units of the part once (a resend is a duplicate,
    E8), however many there are: none counts as a partial operation of the part, whose bound refused the
    fact past it — its units moved out of on_hand and stayed committed for good (Q3)."""
    limits = dataclasses.replace(LIMITS, max_ops_per_reservation=2)
    estate = Estate()
    changed(estate, reserved_order(estate, cmd("o", ("A", "S1", 3))), PendingOp(OrderStep.CONFIRM))
    part, ledger = orders.part_id("o", 0), estate.ledgers[0]
    for n in range(3):
        fact = Fact(f"parcel-{n}", "wms", FactKind.SHIPMENT, "A", "S1", 1, NOW, "o")
        assert order_shipments.ship(ledger, fact, part, NOW, limits) == (FactOutcome.APPLIED, "")
    assert order_shipments.ship(ledger, fact, part, NOW, limits) == (FactOutcome.DUPLICATE, "")
    assert ledger.reservation(part).state == State.FULFILLED  # type: ignore[union-attr]
    assert (ledger.quantities("A", "S1").on_hand, estate.committed("A")) == (7, 0)
