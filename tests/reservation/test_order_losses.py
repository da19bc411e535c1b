"""Orders spanning groups after Redis lost acknowledged entries of some of their groups (``_order_losses``), no
I/O: a part that was confirmed is a confirmed order's — never released by an expiry (R3: only HELD -> EXPIRED;
Q3: committed units never expire) — and an order whose home lost its confirmation is confirmed again, never
expired; one whose home lost its decision as well (its Reserve pending again) is decided again from its parts,
CONFIRMED, never refused nor given up."""

from __future__ import annotations

import msgspec

from reservation import LineRequest, OrderStep, Outcome, PendingOp, Reservation, State, reserve
from reservation import _order_losses as losses
from reservation import _orders as orders
from tests.reservation.helpers import LIMITS, cmd
from tests.reservation.test_orders import NOW, Estate, changed, place, reserved_order

ASKED = cmd("o", ("A", "S1", 3), ("B", "S1", 2))
"""3 of A (group 0, the order's home) and 2 of B (group 1)."""


def _home_lost_its_confirmation(estate: Estate) -> Reservation:
    """Order "o" held, then confirmed — as Redis holds it after the home's group came back from before the
    confirmation: the record HELD (its TTL running) and its part in group 0 held, group 1's part CONFIRMED (the
    share the home's pending CONFIRM sent it). The record Redis holds."""
    held = reserved_order(estate, ASKED)
    done, shares, error = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.CONFIRM), NOW,
                                      LIMITS, place)
    assert error is None and done is not None and done.state == State.CONFIRMED
    estate.apply(held, {1: shares[1]})  # group 0's share and the record's confirmation: lost with its entries
    assert (estate.held("A"), estate.committed("B")) == (3, 2)
    return held


def test_an_expiry_of_an_order_whose_home_lost_its_confirmation_leaves_its_confirmed_part_whole_R3_Q3() -> None:
    """Defect (found by review): a part took its order's EXPIRE share for a release whether it was HELD or
    CONFIRMED. An order whose home lost its confirmation expired when its TTL passed, and its confirmed part's
    committed units were offered again while the caller, told CONFIRMED, ships them (oversold). Only a held part
    is released by an expiry (R3: HELD -> EXPIRED; Q3: committed units never expire)."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    late = held.expires_at
    done, shares, error = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.EXPIRE), late,
                                      LIMITS, place)
    assert error is None and done is not None and done.state == State.EXPIRED  # as the home's record says
    estate.apply(held, shares, late)
    assert estate.committed("B") == 2, "a confirmed part's committed units released by its order's expiry"
    assert estate.parts(held)[1].state == State.CONFIRMED
    assert estate.held("A") == 0  # the held part: released


def test_an_order_whose_home_lost_its_confirmation_is_confirmed_again_and_never_expires_R3_Q3() -> None:
    """A part is confirmed only by the share of a CONFIRM its order's home recorded pending first (R3): the order
    was confirmed. Its confirmation is recorded again, pending, and carried through to every part as a pending
    CONFIRM is (the held part confirmed); the order is then never expired."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    late = held.expires_at
    assert losses.confirmed_by_parts(held, estate.parts(held), place, LIMITS)
    again = losses.confirmed_again(held, late)
    assert (again.state, again.expires_at, again.pending) == (State.CONFIRMED, 0, losses.RESTORED)
    assert again.pending is not None
    estate.apply(again, orders.shares(again, again.pending, place), late)
    settled = orders.settled(again, late, estate.parts(again))
    assert settled.pending is None and orders.view(settled, estate.parts(settled)).state == State.CONFIRMED
    assert (estate.held("A"), estate.committed("A"), estate.committed("B")) == (0, 3, 2)
    assert not losses.confirmed_by_parts(settled, estate.parts(settled), place, LIMITS)
    assert orders.plan(orders.view(settled, estate.parts(settled)), PendingOp(OrderStep.EXPIRE), late + 10**9,
                       LIMITS, place) == (None, {}, None)


def test_a_held_order_whose_parts_are_held_is_not_taken_for_confirmed_and_expires_R3() -> None:
    estate = Estate()
    held = reserved_order(estate, ASKED)
    assert not losses.confirmed_by_parts(held, estate.parts(held), place, LIMITS)
    pending = orders.open_order(ASKED, (0, 1), NOW)  # undecided: a RESERVE pending, never taken for confirmed
    assert not losses.confirmed_by_parts(pending, estate.parts(held), place, LIMITS)
    done, shares, _ = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.EXPIRE),
                                  held.expires_at, LIMITS, place)
    assert done is not None and done.state == State.EXPIRED
    estate.apply(held, shares, held.expires_at)
    assert (estate.held("A"), estate.held("B")) == (0, 0)


def test_a_restored_confirmation_is_told_from_a_confirm_and_kept_whatever_part_redis_lost_R3() -> None:
    """A held order missing a part (``lost_parts``) is given up whole, one whose Confirm stopped half-way too (its
    caller told nothing yet). One whose confirmation was restored from a confirmed part (its caller most likely
    told CONFIRMED) is carried through instead (``restored``): its confirmed part's units stay committed (Q3)."""
    estate = Estate()
    held = _home_lost_its_confirmation(estate)
    parts = estate.parts(held)
    assert losses.confirmed_by_parts(held, {1: parts[1]}, place, LIMITS)  # its part in group 0 lost as well
    again = losses.confirmed_again(held, NOW)
    assert losses.lost_parts(again, {1: parts[1]}, NOW, LIMITS, place) == [0]
    assert losses.restored(again)
    confirming, _, _ = orders.plan(orders.view(held, parts), PendingOp(OrderStep.CONFIRM), NOW, LIMITS, place)
    assert confirming is not None and confirming.pending == PendingOp(OrderStep.CONFIRM)
    assert not losses.restored(confirming) and not losses.restored(held)


def _home_back_before_its_decision(estate: Estate, home_part: bool = True) -> Reservation:
    """Order "o" reserved, decided HELD and confirmed at both parts — as Redis holds it after the home's group came
    back from before the decision: the record undecided (its Reserve pending), its part in group 0 held
    (``home_part``: False, never reserved — group 0 back from before that too), group 1's part CONFIRMED. The record
    Redis holds."""
    opened = orders.open_order(ASKED, (0, 1), NOW)
    if home_part:
        reserved_order(estate, ASKED)
    else:
        reserve(estate.ledgers[1], orders.split(ASKED, place)[1], NOW)
    estate.apply(opened, {1: PendingOp(OrderStep.CONFIRM)})  # group 0's share, decision and confirmation: lost
    assert (estate.held("A"), estate.committed("B")) == (3 if home_part else 0, 2)
    return opened


def test_an_order_whose_home_went_back_before_its_decision_is_decided_again_confirmed_R3_Q3() -> None:
    """Defect (found by review): an order decided and confirmed, whose home's group Redis took back to before the
    decision (its Reserve pending again), was decided as a Reserve decides it: group 1's CONFIRMED part is not one
    that holds, so the held part was released and the order REJECTED (``_orders.decide``) — or, past its TTL, given
    up whole, its confirmed part released: the paid order's committed units offered again. A confirmed part proves
    the order was decided and confirmed (R3): it is decided again from its parts, CONFIRMED (``_order_losses.
    decide``), its confirmation carried through (its held part confirmed), never refused nor expired (Q3)."""
    estate = Estate()
    opened = _home_back_before_its_decision(estate)
    parts = estate.reserve_parts(ASKED)  # the Reserve's steps again: replays of the parts where they are
    assert parts[1].state == State.CONFIRMED
    assert orders.decide(opened, parts, NOW) == (None, [0])  # as a Reserve decides: group 0 released, refused
    assert losses.decided_by_parts(opened, parts, place, LIMITS)
    decided, release = losses.decide(opened, parts, opened.expires_at + 1, place, LIMITS)  # its TTL passed or not
    assert decided is not None and not release
    assert (decided.state, decided.expires_at, decided.pending) == (State.CONFIRMED, 0, losses.RESTORED)
    assert [(line.sku, line.outcome, line.granted) for line in decided.lines] == [
        ("A", Outcome.GRANTED, 3), ("B", Outcome.GRANTED, 2)]
    assert losses.restored(decided) and decided.pending is not None
    estate.apply(decided, orders.shares(decided, decided.pending, place))
    settled = orders.settled(decided, NOW, estate.parts(decided))
    assert orders.view(settled, estate.parts(settled)).state == State.CONFIRMED
    assert (estate.held("A"), estate.committed("A"), estate.committed("B")) == (0, 3, 2)
    assert orders.plan(orders.view(settled, estate.parts(settled)), PendingOp(OrderStep.EXPIRE), NOW + 10**9,
                       LIMITS, place) == (None, {}, None)


def test_an_order_whose_home_went_back_before_its_part_there_has_that_part_reserved_again_R3_Q3() -> None:
    """Group 0 back from before its part was reserved: the Reserve's step reserves it anew (the units were committed
    for the paid order), and the order is decided again CONFIRMED and carried through — both parts committed. Where
    the lost part is not read (missing), its lines are not attempted: committed nowhere (Redis lost them)."""
    estate = Estate()
    opened = _home_back_before_its_decision(estate, home_part=False)
    found = {1: estate.ledgers[1].reservation(orders.part_id("o", 1))}
    assert all(part is not None for part in found.values())
    only = losses.decide(opened, found, NOW, place, LIMITS)[0]  # type: ignore[arg-type]
    assert only is not None and [(line.sku, line.outcome) for line in only.lines] == [
        ("A", Outcome.NOT_ATTEMPTED), ("B", Outcome.GRANTED)]
    decided, _ = losses.decide(opened, estate.reserve_parts(ASKED), NOW, place, LIMITS)
    assert decided is not None and decided.pending is not None and decided.state == State.CONFIRMED
    estate.apply(decided, orders.shares(decided, decided.pending, place))
    assert (estate.held("A"), estate.committed("A"), estate.committed("B")) == (0, 3, 2)
    short = Estate(a=1)  # sold meanwhile: the lost part is refused, the order stays confirmed (A committed nowhere)
    opened = _home_back_before_its_decision(short, home_part=False)
    decided, _ = losses.decide(opened, short.reserve_parts(ASKED), NOW, place, LIMITS)
    assert decided is not None and decided.state == State.CONFIRMED
    assert [(line.sku, line.outcome) for line in decided.lines] == [("A", Outcome.INSUFFICIENT), ("B", Outcome.GRANTED)]
    assert (short.held("A"), short.committed("A"), short.committed("B")) == (0, 0, 2)


def test_an_undecided_order_whose_parts_only_hold_is_decided_as_a_reserve_decides_R2() -> None:
    """No part confirmed: the order is undecided as it looks (the normal case) — held where every part holds, refused
    with its held parts released where one part was refused; and a decided order is never decided again."""
    estate = Estate()
    opened = orders.open_order(ASKED, (0, 1), NOW)
    parts = estate.reserve_parts(ASKED)
    assert not losses.decided_by_parts(opened, parts, place, LIMITS)
    assert losses.decide(opened, parts, NOW, place, LIMITS) == orders.decide(opened, parts, NOW)
    assert losses.decide(opened, parts, NOW, place, LIMITS)[0].state == State.HELD  # type: ignore[union-attr]
    short = Estate(b=1)
    refused = short.reserve_parts(ASKED)
    assert losses.decide(opened, refused, NOW, place, LIMITS) == (None, [0])
    held = reserved_order(Estate(), ASKED)
    confirmed = {g: msgspec.structs.replace(p, state=State.CONFIRMED) for g, p in parts.items()}
    assert not losses.decided_by_parts(held, confirmed, place, LIMITS)  # decided: ``confirmed_by_parts``' case


def test_a_confirmed_part_of_other_content_proves_nothing_of_an_order_and_is_kept_when_it_is_given_up_R5_Q3() -> None:
    """Redis lost a confirmed order's record at its home (its part there too), and its id was reserved again with
    other content: group 1's CONFIRMED part is the first order's, not what this one asks of group 1. It does not
    make this one decided (``decided_by_parts``: decided again, the other content were answered a replay, R5), and
    giving this one up (refused, its part's id taken by other content) keeps it: the first order's committed units
    (Q3). A part of other content that only holds is released, as before (nothing else ever would)."""
    estate = Estate()
    first = _home_back_before_its_decision(estate, home_part=False)
    other = cmd("o", ("A", "S1", 3), ("B", "S1", 1))
    reopened = orders.open_order(other, (0, 1), NOW)
    part = estate.ledgers[1].reservation(orders.part_id("o", 1))
    assert part is not None and part.state == State.CONFIRMED
    assert losses.decided_by_parts(first, {1: part}, place, LIMITS)
    assert not losses.decided_by_parts(reopened, {1: part}, place, LIMITS)
    share = orders.split(other, place)[1]
    kept = losses.give_up_part(estate.ledgers[1], share, NOW, LIMITS)
    assert kept.state == State.CONFIRMED and estate.committed("B") == 2
    held = Estate()
    reserve(held.ledgers[1], orders.split(ASKED, place)[1], NOW)
    assert losses.give_up_part(held.ledgers[1], share, NOW, LIMITS).state == State.RELEASED and held.held("B") == 0


def test_an_order_s_own_confirmed_part_is_kept_when_the_order_is_given_up_undecided_without_reading_it_Q3() -> None:
    """The one case an abandonment cannot see (R3 and R8 with several processes): the home back at its Reserve pending,
    group 1's CONFIRMED part silent when the order was given up undecided past its TTL. Defect (found by the
    simulation): giving the part up once its group answered released its committed units (the paid order's, offered
    again while its caller ships them). It is kept, committed (Q3); a held part of its own is released as before."""
    estate = Estate()
    _home_back_before_its_decision(estate, home_part=False)
    share = orders.split(ASKED, place)[1]
    kept = losses.give_up_part(estate.ledgers[1], share, NOW, LIMITS)
    assert kept.state == State.CONFIRMED and estate.committed("B") == 2
    held = Estate()
    reserve(held.ledgers[1], share, NOW)
    assert losses.give_up_part(held.ledgers[1], share, NOW, LIMITS).state == State.RELEASED and held.held("B") == 0


def test_a_part_released_whole_by_no_change_of_its_held_order_tears_it_R2() -> None:
    """A held part given up as an orphan (its order's record lost) after a retry opened the order again over it: the
    order HELD, its record showing B granted and not released, B's part RELEASED while A's holds — its hold there
    is gone (``released_unrecorded``): given up whole on its Confirm, never CONFIRMED without B (R2). Not a part a
    partial release by line emptied, whose record the home lost (the part knows the release's operation): the
    order's own change, confirmed without that line as before."""
    estate = Estate()
    held = reserved_order(estate, ASKED)
    estate.apply(held, {1: PendingOp(OrderStep.RELEASE)})  # the sweep's release: no operation of the order
    assert losses.released_unrecorded(held, estate.parts(held), place) == [1]
    assert losses.lost_parts(held, estate.parts(held), NOW, LIMITS, place) == [1]
    # Whatever the order's age (docs/OPERATIONS.md ``order_part_lost``): the part is there, not forgotten.
    assert losses.lost_parts(held, estate.parts(held), NOW + LIMITS.retention_ms // 2, LIMITS, place) == [1]
    missing = {0: estate.parts(held)[0]}  # a part missing from an order that old may have been forgotten
    assert losses.lost_parts(held, missing, NOW, LIMITS, place) == [1]
    assert losses.lost_parts(held, missing, NOW + LIMITS.retention_ms // 2, LIMITS, place) == []

    estate = Estate()
    held = reserved_order(estate, ASKED)
    estate.apply(held, {1: PendingOp(OrderStep.RELEASE, (LineRequest("B", "S1", 2),), "op-b")})  # the home lost it
    assert estate.parts(held)[1].state == State.RELEASED
    assert losses.released_unrecorded(held, estate.parts(held), place) == []
    estate.apply(held, {0: PendingOp(OrderStep.RELEASE)})  # every part resolved: resolved as they show it
    assert losses.released_unrecorded(held, estate.parts(held), place) == []


def test_a_confirmed_order_s_lost_part_is_made_again_with_what_it_had_committed_once_R7_Q3_R5() -> None:
    """Redis lost group 1's part of confirmed order "o" (1 of its 2 B released by line first, operation "r1"): the part
    is made again as the order's record holds it — 1 B committed, what was released not — once however often it is
    sent (a replay), and a share of "r1" sent again releases nothing more (R5). An order older than half the
    retention takes a missing part for forgotten: nothing made again."""
    estate = Estate()
    order = changed(estate, reserved_order(estate, ASKED), PendingOp(OrderStep.CONFIRM))
    release = PendingOp(OrderStep.RELEASE, (LineRequest("B", "S1", 1),), "r1")
    order = changed(estate, orders.view(order, estate.parts(order)), release)
    assert (estate.committed("A"), estate.committed("B")) == (3, 1)
    lost = orders.part_id("o", 1)
    estate.ledgers[1].move_hold("B", "S1", 0, -1)  # group 1 back from before the part: gone, and its units
    del estate.ledgers[1].reservations[lost]
    found = {0: estate.ledgers[0].reservation(orders.part_id("o", 0))}
    assert found[0] is not None and losses.lost_committed(order, found, NOW, LIMITS, place) == [1]
    assert losses.lost_committed(order, found, NOW + LIMITS.retention_ms // 2, LIMITS, place) == []
    assert losses.lost_committed(msgspec.structs.replace(order, state=State.HELD), found, NOW, LIMITS, place) == []
    part = losses.part_again(order, 1, place, NOW)
    for _ in range(2):
        made = losses.commit_again(estate.ledgers[1], part, LIMITS)
        assert made.state == State.CONFIRMED and made.reservation_id == lost
        assert [(line.sku, line.committed, line.released) for line in made.lines] == [("B", 1, 1)]
        assert estate.committed("B") == 1
    estate.apply(order, {1: release})
    assert estate.committed("B") == 1, "a share sent again released the part's units a second time"
    assert orders.view(order, estate.parts(order)).state == State.CONFIRMED


def test_a_confirmed_part_of_other_content_does_not_restore_a_held_order_s_confirmation_R3_R5_Q3() -> None:
    """Defect (found by review): ``confirmed_by_parts`` took any confirmed part found under the order's id for its
    own. Order "o" confirmed (group 1's part CONFIRMED, 2 of B); its id reserved again with other content once the
    first was no longer remembered (1 of B), decided HELD; then group 1 back from older data that still held the
    first order's part. The second order was confirmed again (``RESTORED``) on the strength of the first's
    confirmation: its held units committed for good though its caller never confirmed (never released by expiry).
    Only a part of its own content proves its home lost a confirmation (``own_part``): it stays HELD and expires."""
    first_estate = Estate()
    first = _home_lost_its_confirmation(first_estate)
    assert losses.confirmed_by_parts(first, first_estate.parts(first), place, LIMITS)  # its own part: restored
    estate = Estate()
    second = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 1)))
    assert second.state == State.HELD and second.pending is None
    foreign = first_estate.parts(first)[1]  # group 1 back from data older than the second order's part
    assert foreign.state == State.CONFIRMED
    parts = {0: estate.parts(second)[0], 1: foreign}
    assert not losses.confirmed_by_parts(second, parts, place, LIMITS), "restored from another order's confirmed part"
    fulfilled = msgspec.structs.replace(foreign, state=State.FULFILLED)  # an earlier incarnation, shipped
    assert not losses.confirmed_by_parts(second, {0: parts[0], 1: fulfilled}, place, LIMITS)
    assert not losses.confirmed_by_parts(second, {1: foreign}, place, LIMITS)  # its own part at group 0 lost too


def _confirmed_at_group_1_only(estate: Estate, held: Reservation) -> dict[int, Reservation]:
    """``held``'s CONFIRM planned and only group 1's share applied (its home back from before the confirmation)."""
    done, shares, error = orders.plan(orders.view(held, estate.parts(held)), PendingOp(OrderStep.CONFIRM), NOW,
                                      LIMITS, place)
    assert error is None and done is not None
    estate.apply(held, {1: shares[1]})
    parts = estate.parts(held)
    assert parts[1].state == State.CONFIRMED
    return parts


def test_an_order_s_own_confirmed_part_restores_it_whatever_its_content_became_since_R3_Q3() -> None:
    """Review of f1906734 (``own_confirmed``): content that legitimately differs between an order's Reserve and its
    part since — a line released in part or whole, a line refused under allow_partial, a shipment, the part made again
    (``part_again``) — is still its own: its confirmation restored, never expired (its caller told CONFIRMED, Q3)."""
    estate = Estate(b=0)  # B refused under allow_partial, C held
    held = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2), ("C", "S1", 2), partial=True))
    assert losses.confirmed_by_parts(held, _confirmed_at_group_1_only(estate, held), place, LIMITS)
    estate = Estate()
    held = reserved_order(estate, cmd("o", ("A", "S1", 3), ("B", "S1", 2), ("C", "S1", 2)))
    held = changed(estate, held, PendingOp(OrderStep.RELEASE, (LineRequest("B", "S1", 2),), "r1"))
    held = changed(estate, held, PendingOp(OrderStep.RELEASE, (LineRequest("C", "S1", 1),), "r2"))
    parts = _confirmed_at_group_1_only(estate, held)
    assert losses.confirmed_by_parts(held, parts, place, LIMITS)
    shipped = msgspec.structs.replace(parts[1], state=State.FULFILLED)
    assert losses.confirmed_by_parts(held, {0: parts[0], 1: shipped}, place, LIMITS)
    estate = Estate()
    held = reserved_order(estate, ASKED)
    confirmed = changed(estate, held, PendingOp(OrderStep.CONFIRM))
    made = losses.part_again(confirmed, 1, place, NOW)  # its part lost at group 1, made again, then home back
    assert losses.confirmed_by_parts(held, {0: estate.parts(held)[0], 1: made}, place, LIMITS)
    assert losses.own_confirmed(held, {1: made}, place, LIMITS)  # a silent home part: its expiry held back too
