"""A SHIPMENT fact naming an order whose id was reserved again once its first order was no longer remembered (R5), the
first order's part at group 1 back CONFIRMED in the second's place (``order_reuse``), a stale copy (``_order_losses
.stale``). The fact's ``event_time`` tells whose shipment it is: one stamped after the second order opened cannot be
the first's, so it never fulfils that part (the stock moves alone, Q1, R4); one stamped before cannot be the second's,
so it fulfils the first's part there (R4) — a late fact of an order long resolved, which leaves the part as stale as
it was: released by the second order's steps, never committed for good (Q3)."""

from __future__ import annotations

from typing import Any

import pytest

from reservation import Fact, FactKind, FactOutcome, Reservation, State
from tests.atp_service.engine.helpers import SKUS, running
from tests.atp_service.engine.order_reuse import group_1_back, reserved_again
from tests.atp_service.engine.test_order_sagas import Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


async def stale_part_back(rig: Rig) -> tuple[Reservation, Reservation]:
    """The second order ``o`` HELD (3 of group 0's SKU, 1 of group 1's), the first order's CONFIRMED part back at group
    1 (3 committed) in its place: (the second order's record, the part at group 1)."""
    await group_1_back(rig, *await reserved_again(rig, confirm_second=False))
    home = rig.engine.home_of("o")
    assert home is not None
    order = rig.engine.actors[home].ledger.reservation("o")
    assert order is not None and rig.quantities() == [(3, 0), (0, 3)]
    return order, rig.part("o", 1)


def shipped(event_id: str, at: int) -> Fact:
    return Fact(event_id, "wms", FactKind.SHIPMENT, SKUS[1], "DC", 1, at, reservation_id="o")


def on_hand(rig: Rig) -> int:
    return rig.engine.actors[1].ledger.quantities(SKUS[1], "DC").on_hand


async def ship(rig: Rig, fact: Fact) -> tuple[FactOutcome, str]:
    assert rig.engine.orders is not None
    result: tuple[FactOutcome, str] = await rig.run(rig.engine.orders.shipment(fact, "o"))
    return result


async def test_a_shipment_stamped_after_the_order_opened_never_fulfils_another_order_s_part_Q3_R4_E8(
        rig: Rig) -> None:
    """Defect (found by review): the fact fulfilled whatever part held the id at its shard — the first order's, whose
    order was resolved and forgotten before this one opened — and stamped it changed now: no longer ``stale``, the
    second order's Release left its 2 other units committed for good, no order's. The fact is the second order's: the
    stock moves alone (answered not fulfilled), the first order's part left as it was, released with the order."""
    order, part = await stale_part_back(rig)
    before = on_hand(rig)
    fact = shipped("s1", order.created_at + 1)
    outcome, reason = await ship(rig, fact)
    assert outcome == FactOutcome.APPLIED
    assert reason.startswith("stock moved; reservation not fulfilled"), reason
    assert rig.part("o", 1) == part, "another order's part fulfilled by this order's shipment"
    assert on_hand(rig) == before - 1  # the units left all the same (Q1, R4)
    assert (await ship(rig, fact))[0] == FactOutcome.DUPLICATE and on_hand(rig) == before - 1  # applied once (E8)
    assert (await rig.run(rig.engine.release("o", (), ""))).state == State.RELEASED
    assert rig.quantities() == [(0, 0), (0, 0)], "another order's units committed for good"


async def test_a_shipment_stamped_before_the_order_opened_fulfils_the_other_order_s_part_left_stale_Q3_R4(
        rig: Rig) -> None:
    """Defect (found by review): the first order's late shipment fulfilled its part's unit and stamped the part
    changed now, so it was no longer judged ``stale``: the second order's Release left its 2 other units committed for
    good. It fulfils the unit (R4: committed and on_hand together), the part's last change left as it was."""
    order, part = await stale_part_back(rig)
    before = on_hand(rig)
    outcome, reason = await ship(rig, shipped("s1", order.created_at - 1))
    assert (outcome, reason) == (FactOutcome.APPLIED, "")
    shown = rig.part("o", 1)
    assert [line.committed for line in shown.lines] == [2] and shown.updated_at == part.updated_at
    assert on_hand(rig) == before - 1 and rig.quantities() == [(3, 0), (0, 2)]
    assert (await rig.run(rig.engine.release("o", (), ""))).state == State.RELEASED
    assert rig.quantities() == [(0, 0), (0, 0)], "another order's units committed for good"


async def test_a_confirmed_order_s_shipment_fulfils_its_own_part_made_again_over_the_stale_one_R4_Q3(
        rig: Rig) -> None:
    """Pins what stays: the second order CONFIRMED, its shipment first makes its own part again over the stale copy
    (``Orders._settled``: the copy released) and fulfils that one, stamped now, its units gone from committed."""
    await group_1_back(rig, *await reserved_again(rig, confirm_second=True))
    home = rig.engine.home_of("o")
    assert home is not None
    opened = rig.engine.actors[home].ledger.reservation("o")
    assert opened is not None and rig.quantities() == [(0, 3), (0, 3)]
    outcome, reason = await ship(rig, shipped("s1", opened.created_at + 1))
    assert (outcome, reason) == (FactOutcome.APPLIED, "")
    own = rig.part("o", 1)
    assert [line.requested for line in own.lines] == [1] and own.state == State.FULFILLED  # the second order's
    assert rig.quantities() == [(0, 3), (0, 0)]
