"""An order's id reserved again once its first order is no longer remembered (R5), while a part of the first order is
still found under the id (``_order_losses``), no I/O: never taken for the second order's own part (R2, R3, Q3)."""

from __future__ import annotations

import msgspec

from reservation import LineRequest, OrderStep, PendingOp, State, reserve
from reservation import _order_losses as losses
from reservation import _orders as orders
from reservation._order_anew import Anew, forgotten_now
from tests.reservation.helpers import LIMITS, cmd
from tests.reservation.test_orders import NOW, Estate, changed, place, reserved_order

ASKED = cmd("o", ("A", "S1", 3), ("B", "S1", 2))
"""3 of A (group 0, the order's home) and 2 of B (group 1)."""


def test_a_part_resolved_past_its_retention_is_reserved_anew_never_replayed_R5() -> None:
    """Defect (found by review): a part of an earlier order of the id, resolved past its retention at its group and not
    evicted yet there, was replayed to the Reserve of a new order of that id as its own decision (released: the new
    order refused; fulfilled: decided CONFIRMED from it). Resolved half the retention or longer ago by its group's
    clock, its order's home may have forgotten it by a clock ahead of that group's by the gap the service allows
    (``tests/atp_service/app/test_order_id_reuse_clocks.py``): the part is reserved anew over it, the units held; a
    part resolved more recently, or live, is replayed as before."""
    estate = Estate()
    changed(estate, reserved_order(estate, ASKED), PendingOp(OrderStep.RELEASE))
    share = orders.split(ASKED, place)[1]
    part = estate.ledgers[1].reservation(share.reservation_id)
    assert part is not None and part.state == State.RELEASED and estate.held("B") == 0
    late = part.updated_at + LIMITS.retention_ms // 2
    assert forgotten_now(part, late, LIMITS) and not forgotten_now(part, late - 1, LIMITS)
    assert not forgotten_now(None, late, LIMITS)
    again, replayed = reserve(Anew(estate.ledgers[1], share.reservation_id), share, late)
    assert (again.state, replayed, again.created_at) == (State.HELD, False, late) and estate.held("B") == 2
    assert estate.ledgers[1].reservation(share.reservation_id) == again
    assert reserve(estate.ledgers[1], share, late) == (again, True)  # a retry: a replay (R5)
    assert not forgotten_now(again, late + LIMITS.retention_ms, LIMITS)  # live: never forgotten


SECOND = cmd("o", ("A", "S1", 3), ("B", "S1", 1))
"""The id reserved again once the first order (``ASKED``) was forgotten: 1 of B where the first asked 2."""


def _group_1_back_with_the_first_order(estate: Estate, confirmed: bool) -> None:
    """Group 1 back from data older than the second order's part there: the first order's part HELD (``confirmed``:
    CONFIRMED) in its place, with its units — the first order's ledger of group 1 as it stood then."""
    first = Estate()
    held = reserved_order(first, ASKED)
    if confirmed:
        changed(first, held, PendingOp(OrderStep.CONFIRM))
    estate.ledgers[1] = first.ledgers[1]


def test_another_order_s_part_under_the_id_is_a_lost_part_whatever_the_order_s_age_R2_R5() -> None:
    """Defect (found by review): ``lost_parts`` took a part of other content found under a held order's id for its
    own: its Confirm went through, the other order's held part confirmed on its behalf. The order's own part there is
    gone, its hold with it: lost — at any age (the part is there, not forgotten). Its own parts are never lost."""
    estate = Estate()
    second = reserved_order(estate, SECOND)
    assert losses.lost_parts(second, estate.parts(second), NOW, LIMITS, place) == []
    assert losses.others(second, estate.parts(second), place, LIMITS) == []
    _group_1_back_with_the_first_order(estate, confirmed=False)
    parts = estate.parts(second)
    for now in (NOW, NOW + LIMITS.retention_ms):
        assert losses.lost_parts(second, parts, now, LIMITS, place) == [1], "another order's part taken for its own"
    assert losses.own_parts(second, parts, place, LIMITS) == {0: parts[0]}
    confirm = orders.shares(second, PendingOp(OrderStep.CONFIRM), place)
    # never confirmed on its behalf; its hold (no order's) given back, expired
    assert losses.shares_for(second, confirm, parts, place, LIMITS) == {0: confirm[0], 1: PendingOp(OrderStep.EXPIRE)}
    release = orders.shares(second, PendingOp(OrderStep.RELEASE), place)
    assert losses.shares_for(second, release, parts, place, LIMITS) == {0: release[0], 1: PendingOp(OrderStep.EXPIRE)}
    # a group not read (silent, or no part there): no share, whose part it holds not known
    assert losses.shares_for(second, release, {0: parts[0]}, place, LIMITS) == {0: release[0]}


def test_a_confirmed_order_s_part_replaced_by_another_order_s_is_made_again_over_it_R7_Q3() -> None:
    """Defect (found by review): a CONFIRMED order whose part at group 1 was replaced by another order's of its id
    (held) missed no part (``lost_committed``), and ``commit_again`` answered the other's as a replay: the order's
    unit committed nowhere, the other's 2 held for good. Made again over it, its hold released (no order's now). A
    CONFIRMED one is kept (Q3: a confirmed order's units), never released, fulfilled nor confirmed on its behalf."""
    estate = Estate()
    second = changed(estate, reserved_order(estate, SECOND), PendingOp(OrderStep.CONFIRM))
    _group_1_back_with_the_first_order(estate, confirmed=False)
    assert (estate.held("B"), estate.committed("B")) == (2, 0)
    assert losses.lost_committed(second, estate.parts(second), NOW, LIMITS, place) == [1]
    made = losses.commit_again(estate.ledgers[1], losses.part_again(second, 1, place, NOW), LIMITS)
    assert [(line.sku, line.requested, line.committed) for line in made.lines] == [("B", 1, 1)]
    assert (estate.held("B"), estate.committed("B")) == (0, 1), "the order's unit committed nowhere"
    assert losses.lost_committed(second, estate.parts(second), NOW, LIMITS, place) == []

    _group_1_back_with_the_first_order(estate, confirmed=True)
    parts = estate.parts(second)
    kept = losses.commit_again(estate.ledgers[1], losses.part_again(second, 1, place, NOW), LIMITS)
    assert kept == parts[1] and (estate.held("B"), estate.committed("B")) == (0, 2)
    for step in (PendingOp(OrderStep.RELEASE), PendingOp(OrderStep.FULFIL), PendingOp(OrderStep.EXPIRE)):
        assert 1 not in losses.shares_for(second, orders.shares(second, step, place), parts, place, LIMITS)
        mine = losses.own_parts(second, parts, place, LIMITS)
        done, shares, _ = orders.plan(orders.view(second, mine), step, NOW, LIMITS,
                                      place)
        if done is not None:  # as recorded pending (its lines released, a stop carrying it through): the same
            assert 1 not in losses.shares_for(done, shares, parts, place, LIMITS)


def test_a_same_content_part_resolved_long_before_its_order_opened_is_another_order_s_R7_R3_Q3() -> None:
    """Defect (found by review): the first order of the id fulfilled and forgotten, the id reserved again with the same
    content, then group 1 back from data older than the second order's part: the first's FULFILLED part, same content,
    was taken for the second's own (``own_part``): the HELD order confirmed again from it (``confirmed_by_parts``),
    nothing held or committed at group 1 for it. A resolved part is the order's own only if resolved less than three
    quarters of the retention before the order opened: an own part is resolved after its order opened, and one
    replayed to a retry of its Reserve (its home lost it) under half the retention before by a group's clock the
    home's runs less than a quarter of the retention ahead of. Counted own up to a retention and a half, the first
    order's part was read as the second's; up to a retention, so where its group's clock ran ahead of the home's."""
    first = Estate()
    fulfilled = changed(first, changed(first, reserved_order(first, ASKED), PendingOp(OrderStep.CONFIRM)),
                        PendingOp(OrderStep.FULFIL))
    part = first.parts(fulfilled)[1]
    assert part.state == State.FULFILLED
    estate = Estate()
    held = reserved_order(estate, ASKED)
    estate.ledgers[1] = first.ledgers[1]  # group 1 back from data older than the second order's part
    margin, half = LIMITS.retention_ms * 3 // 4, LIMITS.retention_ms // 2
    for late, own in ((part.updated_at + margin - 1, True), (part.updated_at + margin, False)):
        second = msgspec.structs.replace(held, created_at=late)
        parts = estate.parts(second)
        assert losses.others(second, parts, place, LIMITS) == ([] if own else [1])
        assert losses.lost_parts(second, parts, late, LIMITS, place) == ([] if own else [1])
    # Proof of a confirmation only resolved less than three quarters of the retention before it opened, as an own part
    # is: one older is an earlier order's (``forgotten``), which confirmed the HELD order again unasked, or decided it
    # CONFIRMED (R3); one younger, its own, shipped (read so), never left HELD to expire.
    for late, proof in ((part.updated_at + half, True), (part.updated_at + margin - 1, True),
                        (part.updated_at + margin, False)):
        second = msgspec.structs.replace(held, created_at=late)
        parts = estate.parts(second)
        assert losses.confirmed_by_parts(second, parts, place, LIMITS) is proof, (late, proof)
        opened = msgspec.structs.replace(second, pending=PendingOp(OrderStep.RESERVE))
        assert losses.decided_by_parts(opened, parts, place, LIMITS) is proof, (late, proof)
    confirmed = msgspec.structs.replace(held, state=State.CONFIRMED, created_at=part.updated_at + margin + 1)
    assert losses.lost_committed(confirmed, estate.parts(confirmed), NOW, LIMITS, place) == [1]
    made = losses.commit_again(estate.ledgers[1], losses.part_again(confirmed, 1, place, NOW), LIMITS)
    assert made.state == State.CONFIRMED and estate.committed("B") == 2, "the order's units committed nowhere"


def test_a_stale_part_s_release_landing_late_never_releases_the_order_s_own_part_made_over_it_Q3() -> None:
    """Defect (found by review): a change's share to another order's ``stale`` confirmed part was a whole Release sent
    by the part's id alone, whatever part is there when it lands. One landing after the order's own part was made over
    the stale one (``commit_again``: with leases, the home's next owner carried the change through and made the part
    again while its previous owner's saga went on with the share it had read; a step in doubt landing late) released
    the CONFIRMED order's own part, its units committed nowhere (Q3). It releases only the part it was judged on."""
    estate = Estate()
    asked = cmd("o", ("A", "S1", 3), ("B", "S1", 1), ("C", "S1", 1))
    second = changed(estate, reserved_order(estate, asked), PendingOp(OrderStep.CONFIRM))
    second = msgspec.structs.replace(second, created_at=NOW + LIMITS.retention_ms // 2)
    _group_1_back_with_the_first_order(estate, confirmed=True)
    parts = estate.parts(second)
    assert losses.stale(second, parts[1], LIMITS) and estate.committed("B") == 2
    release = orders.shares(second, PendingOp(OrderStep.RELEASE, (LineRequest("C", "S1", 1),), "r1"), place)
    share = losses.shares_for(second, release, parts, place, LIMITS)
    estate.apply(second, share)  # released, as it was read
    assert (estate.committed("B"), estate.committed("C")) == (0, 0)
    own = losses.commit_again(estate.ledgers[1], losses.part_again(second, 1, place, NOW + 1), LIMITS)
    assert (estate.committed("B"), estate.committed("C")) == (1, 1)
    estate.apply(second, share)  # the same share landing again, late
    assert estate.ledgers[1].reservation(own.reservation_id) == own, "the order's own confirmed part released"
    assert (estate.committed("B"), estate.committed("C")) == (1, 1)


def test_a_shipped_part_its_reserve_step_replayed_proves_the_order_confirmed_by_any_home_clock_R3_R5() -> None:
    """Defect (found by review): an order opened again at its home (its record lost, R7) is judged there by its home's
    clock, its parts' Reserve steps by their groups' clocks, which the home's may run ahead of by two gaps allowed added
    up (each under an eighth of the retention). A FULFILLED part its step replayed (resolved under half the retention
    ago by its group's clock) was judged again by the order's opening (``created_at``) and taken for an earlier order's:
    no proof of a confirmation, the order decided REJECTED from its own shipped part, its other holds released. As the
    steps answered the parts, a replayed one is the order's own (``answered``); as read, by the opening, so too (under
    three quarters of the retention before it: half and the gap), and an earlier order's (past that) proves nothing."""
    estate = Estate()
    fulfilled = changed(estate, changed(estate, reserved_order(estate, ASKED), PendingOp(OrderStep.CONFIRM)),
                        PendingOp(OrderStep.FULFIL))
    parts = estate.parts(fulfilled)
    ahead = msgspec.structs.replace(fulfilled, state=State.HELD, pending=PendingOp(OrderStep.RESERVE),
                                    created_at=parts[1].updated_at + LIMITS.retention_ms // 2)
    assert losses.decided_by_parts(ahead, parts, place, LIMITS, answered=True)
    assert losses.decided_by_parts(ahead, parts, place, LIMITS), "read back, its own shipped part proves nothing"
    earlier = msgspec.structs.replace(ahead, created_at=parts[1].updated_at + LIMITS.retention_ms * 3 // 4)
    assert not losses.decided_by_parts(earlier, parts, place, LIMITS), "read back, an earlier order's proves it"
    decided, release = losses.decide(ahead, parts, NOW, place, LIMITS, answered=True)
    assert decided is not None and decided.state == State.CONFIRMED and release == []
