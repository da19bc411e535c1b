"""A Fulfil of an order committed nowhere (``engine.losses``: CONFIRMED, another order's confirmed part of its id
kept in the place of its part at a group, R7, Q3), on a Redis Cluster (``engine.orders`` over the simulation's
in-process log): what it may fulfil there, and what it is told (R3, R4, R5)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from reservation import InvalidArgument, Limits, LineRequest, State, reserve_command
from tests.atp_service.engine.helpers import SKUS, running
from tests.atp_service.engine.order_reuse import group_1_back, reserved_again
from tests.atp_service.engine.test_order_id_reuse import now_nowhere
from tests.atp_service.engine.test_order_sagas import Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


def on_hand(rig: Rig) -> list[int]:
    return [actor.ledger.quantities(sku, "DC").on_hand for actor, sku in zip(rig.engine.actors, SKUS, strict=True)]


async def test_a_fulfil_naming_an_order_s_units_committed_nowhere_is_refused_never_told_done_R4_R5_Q3(
        rig: Rig) -> None:
    """Defect (found by review): an order committed nowhere shows its line at the group whose part is another order's
    committed (Q3); a Fulfil naming that line was answered done — though no part holds those units to move (R4), and
    the order's record keeps only what its steps released, so the line read committed again at once, as the answer
    itself showed: told done, nothing done, every later Fulfil of it the same. Refused, naming the line, as a Fulfil of
    units not committed is; the order, the other order's part and the stock untouched, its retry refused alike (R5)."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    before = await rig.run(engine.get_reservation("o"))
    assert [(line.committed, line.fulfilled) for line in before.lines] == [(3, 0), (1, 0)]
    stock = on_hand(rig), rig.quantities()
    for _ in range(2):
        with pytest.raises(InvalidArgument, match=r"lines\[0\]\.quantity: .*committed nowhere") as refused:
            await rig.run(engine.fulfill("o", (LineRequest(SKUS[1], "DC", 1),), "f1"))
        assert refused.value.fields == ("lines[0].quantity",)
    assert (await rig.run(engine.get_reservation("o"))) == before
    assert (on_hand(rig), rig.quantities()) == stock
    assert rig.part("o", 1) == first and now_nowhere(rig) == 1


async def test_a_fulfil_of_an_order_committed_nowhere_s_other_lines_fulfils_them_R4(rig: Rig) -> None:
    """A Fulfil naming only its lines whose part is its own fulfils them as ever (R4: committed and on_hand together);
    the order stays CONFIRMED, its unit committed nowhere still counted."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    done = await rig.run(engine.fulfill("o", (LineRequest(SKUS[0], "DC", 3),), "f0"))
    assert (done.state, [(line.committed, line.fulfilled) for line in done.lines]) == (
        State.CONFIRMED, [(0, 3), (1, 0)])
    assert on_hand(rig)[0] == 4 and rig.quantities()[0] == (0, 0)
    assert now_nowhere(rig) == 1


async def test_a_fulfil_naming_an_order_s_line_released_there_is_refused_as_ever_R3_R4(rig: Rig) -> None:
    """Its line at that group released (the runbook's way out), a Fulfil naming it is refused as one naming units not
    committed is (nothing left there: 0 units committed), the order no longer counted committed nowhere."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    await rig.run(engine.release("o", (LineRequest(SKUS[1], "DC", 1),), "r1"))
    with pytest.raises(InvalidArgument, match=r"lines\[0\]\.quantity: 1 exceeds the 0 units committed$"):
        await rig.run(engine.fulfill("o", (LineRequest(SKUS[1], "DC", 1),), "f1"))
    assert now_nowhere(rig) == 0


async def test_a_whole_fulfil_of_an_order_committed_nowhere_is_refused_naming_its_lines_never_told_done_R4_Q1(
        rig: Rig) -> None:
    """Defect (found by review): a Fulfil of the whole order was answered FULFILLED though no part holds its units at
    the group whose part is another order's (R4): nothing moved out of ``on_hand`` there, the units that left the
    warehouse offered again (Q1, Q5), and the order no longer counted committed nowhere, the alert gone. Refused
    ``INVALID_FIELD`` naming ``lines`` (the line and its group in the message), as a Fulfil naming that line is: the
    order, the other order's part and the stock untouched, a retry refused alike (R5)."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    before = await rig.run(engine.get_reservation("o"))
    stock = on_hand(rig), rig.quantities()
    said = rf"^lines: .*committed nowhere, its lines {SKUS[1]} at DC in shard group 1 .*held by hand"
    for operation_id in ("", "", "whole"):
        with pytest.raises(InvalidArgument, match=said) as no:
            await rig.run(engine.fulfill("o", (), operation_id))
        assert no.value.fields == ("lines",)
    assert (await rig.run(engine.get_reservation("o"))) == before
    assert (on_hand(rig), rig.quantities()) == stock
    assert rig.part("o", 1) == first and now_nowhere(rig) == 1


async def test_its_line_there_released_a_whole_fulfil_fulfils_the_rest_and_moves_their_stock_R4(rig: Rig) -> None:
    """The runbook's way out taken (its line there released, the units held by hand), a Fulfil of the whole order
    fulfils what is left, its units out of ``on_hand`` where its own part holds them (R4); FULFILLED, no longer
    counted, the other order's part untouched."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    await rig.run(engine.release("o", (LineRequest(SKUS[1], "DC", 1),), "r1"))
    held_there = on_hand(rig)[1]
    done = await rig.run(engine.fulfill("o", (), ""))
    assert (done.state, [(line.committed, line.fulfilled, line.released) for line in done.lines]) == (
        State.FULFILLED, [(0, 3, 0), (0, 0, 1)])
    assert on_hand(rig) == [4, held_there] and rig.quantities()[0] == (0, 0)
    assert rig.part("o", 1) == first and now_nowhere(rig) == 0


async def test_the_runbook_step_by_step_settles_the_order_and_moves_its_units_there_once_R4_Q1_Q3(rig: Rig) -> None:
    """The runbook (docs/OPERATIONS.md, ``order_part_committed_again``) with the API as it is: its units there held by
    hand under a new id and confirmed (1), the order's line there released (2: no longer counted), the order's
    whole Fulfil fulfils the rest (FULFILLED), the new reservation fulfilled when those units ship (3): ``on_hand``
    there falls once, by the units shipped; the other order's part untouched (Q3)."""
    engine = rig.engine
    first, second = await reserved_again(rig, confirm_second=True)
    first = msgspec.structs.replace(first, updated_at=second.updated_at)  # recent: not ``stale``
    await group_1_back(rig, first, second)
    there = on_hand(rig)[1]
    by_hand = reserve_command(reservation_id="by-hand", order_ref="o", channel="web", ttl_seconds=60,
                              lines=[(SKUS[1], "DC", 1)], allow_partial=False, limits=Limits())
    assert (await rig.run(engine.reserve(by_hand)))[0].state == State.HELD
    assert (await rig.run(engine.confirm("by-hand"))).state == State.CONFIRMED
    await rig.run(engine.release("o", (LineRequest(SKUS[1], "DC", 1),), "r1"))
    assert now_nowhere(rig) == 0
    assert (await rig.run(engine.fulfill("o", (), ""))).state == State.FULFILLED
    assert (await rig.run(engine.fulfill("by-hand", (), ""))).state == State.FULFILLED
    assert on_hand(rig)[1] == there - 1 and rig.part("o", 1) == first
