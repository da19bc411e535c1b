"""An order spanning groups on a Redis Cluster (``engine.orders``, over the simulation's in-process log) whose
home's node restarted from data older than its confirmation, while the node of its other part kept the part
CONFIRMED: the order is confirmed again, never expired — its committed units are never released by an expiry
(R3: only HELD -> EXPIRED; Q3: committed units never expire)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from atp_service.engine import parts
from atp_service.engine.losses import KEPT
from atp_service.engine.parts import ReadPart
from reservation import DomainError, Fact, FactKind, Reason, State
from reservation import _orders as orders
from tests.atp_service.engine.helpers import SKUS, running
from tests.atp_service.engine.test_order_sagas import Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


async def home_lost_its_confirmation(rig: Rig, rid: str, lose_home_part: bool = False) -> None:
    """Order ``rid`` (3 of each SKU: a part in group 0, its home, and one in group 1) confirmed; then group 0's node
    back from when it was held: its record HELD (its TTL running), its part there held (``lose_home_part``: gone,
    its node older still), group 1's part CONFIRMED."""
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd(rid)))
    home = engine.actors[0].ledger
    held, held_part = home.reservation(rid), home.reservation(orders.part_id(rid, 0))
    assert (await rig.run(engine.confirm(rid))).state == State.CONFIRMED
    assert rig.quantities() == [(0, 3), (0, 3)]

    def back(ledger: Any, _now: int) -> None:
        part = ledger.reservation(held_part.reservation_id)
        for line in part.lines:
            ledger.move_hold(line.sku, line.location, 0 if lose_home_part else line.committed, -line.committed)
        if lose_home_part:
            del ledger.reservations[held_part.reservation_id]
        else:
            ledger.save(held_part)
        ledger.save(held)

    await rig.run(engine.actors[0].submit(back))
    assert rig.quantities() == [(0 if lose_home_part else 3, 0), (0, 3)]


async def test_an_order_whose_home_lost_its_confirmation_is_confirmed_again_by_its_expiry_R3_Q3(rig: Rig) -> None:
    """Defect (found by review): the order's expiry sent each part an EXPIRE share, which released the part in
    group 1 though CONFIRMED: its 3 committed units offered again while the caller, told CONFIRMED, ships them."""
    await home_lost_its_confirmation(rig, "o1")
    rig.clock.advance(61_000)  # past the TTL of the record the home holds
    await rig.run(rig.engine.run_maintenance())  # its expiry comes due: a saga in the background
    home = rig.engine.actors[0].ledger
    for _ in range(50):
        await rig.pump_until_done([])
        await asyncio.sleep(0)
        if (record := home.reservation("o1")) is not None and record.state != State.HELD and record.pending is None:
            break
    assert rig.quantities() == [(0, 3), (0, 3)], "a confirmed part's committed units released by an expiry"
    assert home.reservation("o1").state == State.CONFIRMED  # type: ignore[union-attr]
    assert (await rig.run(rig.engine.get_reservation("o1"))).state == State.CONFIRMED


async def test_an_order_whose_home_lost_its_confirmation_and_a_part_is_not_given_up_R3_Q3(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Its home's part lost too (``lost_parts``): a held order is given up whole for it, its parts released — this
    one's confirmation is carried through instead, the confirmed part's units kept committed, and the lost part made
    again, its 3 units committed again in group 0 (``order_part_committed_again``). Defect (the known gap, closed):
    they were committed nowhere, sold again while the caller, told CONFIRMED, ships them (Q3)."""
    caplog.set_level(logging.ERROR, logger="atp_service")
    await home_lost_its_confirmation(rig, "o1", lose_home_part=True)
    got = await rig.run(rig.engine.get_reservation("o1"))  # whatever drives it on: a read here
    assert got.state == State.CONFIRMED
    assert rig.quantities() == [(0, 3), (0, 3)], "the lost part's units committed nowhere"
    events = [getattr(r, "event", None) for r in caplog.records]
    assert {"order_confirmation_restored", "order_part_lost", "order_part_committed_again"} <= set(events), events
    assert any(KEPT in r.getMessage() for r in caplog.records)


async def home_lost_its_decision(rig: Rig, rid: str, lose_home_part: bool = False) -> None:
    """Order ``rid`` confirmed; then group 0's node back from before the order was decided: its record undecided
    (its Reserve pending, its TTL running), its part there held (``lose_home_part``: gone, its node older still),
    group 1's part CONFIRMED."""
    await home_lost_its_confirmation(rig, rid, lose_home_part)
    home = rig.engine.actors[0].ledger
    held = home.reservation(rid)
    opened = orders.open_order(rig.cmd(rid), held.parts, held.created_at)
    assert [line.requested for line in opened.lines] == [line.requested for line in held.lines]
    await rig.run(rig.engine.actors[0].submit(lambda ledger, _now: ledger.save(opened)))
    assert home.reservation(rid).pending is not None
    assert rig.quantities() == [(0 if lose_home_part else 3, 0), (0, 3)]


async def test_an_order_whose_home_lost_its_decision_is_decided_again_by_its_expiry_R3_Q3(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Defect (found by review): past its TTL the order, undecided as its record says, was given up whole and every
    part released — group 1's CONFIRMED one too, its 3 committed units offered again while the caller, told
    CONFIRMED, ships them. A confirmed part proves the order was decided and confirmed: decided again, CONFIRMED."""
    caplog.set_level(logging.ERROR, logger="atp_service")
    await home_lost_its_decision(rig, "o1")
    rig.clock.advance(61_000)  # past the TTL of the record the home holds
    await rig.run(rig.engine.run_maintenance())  # its expiry comes due, it is driven on: sagas in the background
    home = rig.engine.actors[0].ledger
    for _ in range(50):
        await rig.pump_until_done([])
        await asyncio.sleep(0)
        if (record := home.reservation("o1")) is not None and record.pending is None:
            break
    assert rig.quantities() == [(0, 3), (0, 3)], "a confirmed part's committed units released"
    assert home.reservation("o1").state == State.CONFIRMED  # type: ignore[union-attr]
    assert (await rig.run(rig.engine.get_reservation("o1"))).state == State.CONFIRMED
    assert "order_decision_restored" in [getattr(r, "event", None) for r in caplog.records]


async def test_an_order_whose_home_lost_its_decision_and_its_part_there_commits_that_part_again_oversold_Q3_Q5(
        rig: Rig) -> None:
    """Group 0's node lost the order's decision and its part there; 9 of group 0's 10 units sold meanwhile. Defect
    (the known gap, closed): the order, decided again from group 1's confirmed part, reserved group 0's part again
    as a Reserve does; its 3 units no longer fit, so the line was refused and they were committed nowhere — offered
    again while the caller, told CONFIRMED, ships them. An order decided all or none whose part is confirmed held
    every part: the lost part is made again committed, the position shown oversold (Q5), as for a lost part of an
    order whose decision its home kept (``order_part_committed_again``)."""
    await home_lost_its_decision(rig, "o1", lose_home_part=True)
    sale = Fact("sale-1", "pos", FactKind.SALE, SKUS[0], "DC", 9, rig.clock.now_ms())
    await rig.run(rig.engine.actors[0].submit(lambda ledger, _now: ledger.record_fact(sale)))
    got = await rig.run(rig.engine.get_reservation("o1"))
    assert got.state == State.CONFIRMED
    assert [(line.granted, line.committed) for line in got.lines] == [(3, 3), (3, 3)], got.lines
    assert rig.quantities() == [(0, 3), (0, 3)], "the lost part's units committed nowhere"
    assert rig.part("o1", 0).state == State.CONFIRMED
    assert rig.engine.actors[0].ledger.quantities(SKUS[0], "DC").available == 1 - 3  # oversold, shown (Q5)


async def test_a_reserve_retry_of_an_order_whose_home_lost_its_decision_never_rejects_it_R3_R5(rig: Rig) -> None:
    """Defect (found by review): the retry decided the order as a Reserve does — group 1's part CONFIRMED is not
    one that holds — released group 0's held part and recorded it REJECTED, answered so. It is answered its first
    decision replayed as the order stands (CONFIRMED, a replay: R5), every part committed."""
    await home_lost_its_decision(rig, "o1")
    rec, replayed = await rig.run(rig.engine.reserve(rig.cmd("o1")))
    assert (rec.state, replayed) == (State.CONFIRMED, True)
    assert [line.granted for line in rec.lines] == [3, 3]
    assert rig.quantities() == [(0, 3), (0, 3)]


async def test_a_reserve_reusing_the_id_of_a_confirmed_order_whose_record_was_lost_is_refused_its_parts_kept_R5_Q3(
        rig: Rig) -> None:
    """Redis lost confirmed order o1's record at its home, its parts kept; o1 sent again with other content finds its
    parts' ids taken by other content. Defect (found by review): a part confirmed was taken as proof that this order
    was decided, and it was decided again CONFIRMED and answered a replay, the other content recorded over the first
    order's parts (R5: the same id with other content is refused). It is refused RESERVATION_ID_REUSED, as one whose
    parts only hold is — and the confirmed parts, the first order's (its caller told CONFIRMED), are kept, not given
    up with the refused one: their committed units offered again while they are shipped (Q3)."""
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd("o1")))
    assert (await rig.run(engine.confirm("o1"))).state == State.CONFIRMED
    await rig.run(engine.actors[0].submit(lambda ledger, _now: ledger.reservations.pop("o1")))
    with pytest.raises(DomainError) as refused:
        await rig.run(engine.reserve(rig.cmd("o1", (2, 2))))
    assert refused.value.reason == Reason.RESERVATION_ID_REUSED, refused.value
    assert rig.quantities() == [(0, 3), (0, 3)], "the first order's committed units released"
    assert rig.part("o1", 0).state == rig.part("o1", 1).state == State.CONFIRMED
    assert (await rig.run(engine.get_reservation("o1"))).state == State.EXPIRED


async def test_a_held_order_with_another_order_s_confirmed_part_under_its_id_expires_R3_R5_Q3(rig: Rig) -> None:
    """Defect (found by review): an order recorded HELD was confirmed again on the strength of any confirmed part
    under its id. "o2" (2 of each) held; then group 1's node back from data older than its part there, holding an
    earlier order's part of that id (3 units, confirmed: that order no longer remembered at its home, its id
    reserved again). Its expiry confirmed "o2" instead (``order_confirmation_restored``): its 2 held units in group 0
    committed for good though its caller never confirmed it. A part of other content proves nothing of this order
    (R5): it expires, its hold given back, the earlier order's part left confirmed (Q3)."""
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd("o1")))
    assert (await rig.run(engine.confirm("o1"))).state == State.CONFIRMED
    earlier = rig.part("o1", 1)
    await rig.run(engine.reserve(rig.cmd("o2", (2, 2))))
    assert rig.quantities() == [(2, 3), (2, 3)]
    foreign = msgspec.structs.replace(earlier, reservation_id=orders.part_id("o2", 1))

    def back(ledger: Any, _now: int) -> None:  # group 1 from older data: the earlier "o2"'s part, 3 committed
        ledger.move_hold(SKUS[1], "DC", -2, 3)
        ledger.save(foreign)

    await rig.run(engine.actors[1].submit(back))
    assert rig.quantities() == [(2, 3), (0, 6)]
    rig.clock.advance(61_000)  # past the TTL of "o2"
    await rig.run(engine.run_maintenance())  # its expiry comes due: a saga in the background
    home = engine.actors[0].ledger
    for _ in range(50):
        await rig.pump_until_done([])
        await asyncio.sleep(0)
        if (record := home.reservation("o2")) is not None and record.state != State.HELD and record.pending is None:
            break
    assert home.reservation("o2").state == State.EXPIRED, home.reservation("o2")  # type: ignore[union-attr]
    assert rig.quantities() == [(0, 3), (0, 6)], "its held units committed on another order's confirmation"
    assert rig.part("o2", 1) == foreign  # the earlier order's: kept confirmed (Q3)


async def test_a_part_its_order_s_release_gave_up_before_the_home_lost_that_release_is_said_so_R7(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """"o1" released whole (group 1's part RELEASED by its share); then group 0's node, its home, back from when it
    was held: its record HELD, its part there held, no lease anywhere. A Confirm finds group 1's part released by no
    change its home records (``released_unrecorded``): given up whole, ``order_part_lost``. Defect (found by review,
    d5a26313): the line gave the lease-only cause for it — "given up as orphans before a retry of its Reserve opened
    it again" — sending the operator of a Redis Cluster after orphans, where Redis lost acknowledged entries at the
    order's home (its record back from older data): the line names that cause too."""
    caplog.set_level(logging.ERROR, logger="atp_service")
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd("o1")))
    home = engine.actors[0].ledger
    held, held_part = home.reservation("o1"), home.reservation(orders.part_id("o1", 0))
    assert (await rig.run(engine.release("o1", (), ""))).state == State.RELEASED
    assert rig.quantities() == [(0, 0), (0, 0)]

    def back(ledger: Any, _now: int) -> None:  # group 0 from older data: the order and its part there held
        for line in held_part.lines:
            ledger.move_hold(line.sku, line.location, line.held, 0)
        ledger.save(held_part)
        ledger.save(held)

    await rig.run(engine.actors[0].submit(back))
    assert rig.quantities() == [(3, 0), (0, 0)] and rig.part("o1", 1).state == State.RELEASED
    with pytest.raises(DomainError):
        await rig.run(engine.confirm("o1"))
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "order_part_lost"]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert "released whole" in said[0] and "is missing" not in said[0], said[0]
    assert "its home" in said[0] and "older data" in said[0], f"the home's loss not named: {said[0]}"
    assert rig.quantities() == [(0, 0), (0, 0)]

def group_1_back_once_decided(rig: Rig, monkeypatch: pytest.MonkeyPatch, back: Callable[[Any, int], None]) -> Any:
    """``parts.run_part`` patched so that ``back`` is done on group 1's ledger once, just before the first read of
    "o1"'s part there after its home recorded it decided (CONFIRMED, nothing pending): group 1 back from older data
    between a retry's decision and its last read (R7). Returns the real ``run_part``, put back at that read."""
    home, run_part = rig.engine.actors[0].ledger, parts.run_part

    async def once_decided(engine_: Any, group: int, step: Any) -> Any:
        record = home.reservation("o1")
        if group == 1 and isinstance(step, ReadPart) and record.state == State.CONFIRMED and record.pending is None:
            monkeypatch.setattr(parts, "run_part", run_part)  # once: the last read of the retry
            await rig.engine.actors[1].submit(back)
        return await run_part(engine_, group, step)

    monkeypatch.setattr(parts, "run_part", once_decided)
    return run_part


async def test_a_reserve_retry_deciding_an_order_again_never_answers_another_order_s_part_in_its_place_R5_Q3(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect (found by review): a retry of the Reserve of an order whose home lost its decision decides it again
    (CONFIRMED, from group 1's confirmed part) and answers it from its parts read then — all of them: group 1 back
    from older data just after (R7), another order's confirmed part of its id in its place (1 unit, kept: Q3), the
    retry was answered with that part's lines, another content than the caller sent (R5: a retry answers the order
    as it stands). Answered the order's own lines, as a read of it answers: those there committed (nowhere)."""
    await home_lost_its_decision(rig, "o1")

    def another_order_s_part(ledger: Any, now: int) -> None:
        mine = ledger.reservation(orders.part_id("o1", 1))
        for line in mine.lines:
            ledger.move_hold(line.sku, line.location, 0, 1 - line.committed)
        ledger.save(msgspec.structs.replace(mine, updated_at=now, lines=tuple(
            msgspec.structs.replace(line, requested=1, granted=1, committed=1) for line in mine.lines)))

    run_part = group_1_back_once_decided(rig, monkeypatch, another_order_s_part)
    replay, replayed = await rig.run(rig.engine.reserve(rig.cmd("o1")))
    assert run_part is parts.run_part, "group 1 back after the decision"
    assert (replay.state, replayed) == (State.CONFIRMED, True)
    assert [(line.requested, line.granted, line.committed) for line in replay.lines] == [(3, 3, 3), (3, 3, 3)]
    assert replay == await rig.run(rig.engine.get_reservation("o1"))
    assert rig.part("o1", 1).lines[0].requested == 1, "the other order's part kept (Q3)"


async def test_a_reserve_retry_deciding_an_order_again_never_answers_a_part_lost_just_after_as_shipped_R5_Q3(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect (found by review): a retry of the Reserve of an order whose home lost its decision decides it again
    (CONFIRMED) and answered it from its parts read then, without looking for a part lost: group 1 back from older
    data just after (R7), its part gone, the retry answered that line shipped (3 fulfilled, nothing committed) — read
    as a part forgotten past its retention — while a read of the order just after makes the part again and answers it
    committed, nothing shipped (R4, Q3). Answered as a read answers: its part made again, its units committed."""
    await home_lost_its_decision(rig, "o1")

    def part_lost(ledger: Any, _now: int) -> None:
        part_id = orders.part_id("o1", 1)
        for line in ledger.reservation(part_id).lines:
            ledger.move_hold(line.sku, line.location, -line.held, -line.committed)
        del ledger.reservations[part_id]

    run_part = group_1_back_once_decided(rig, monkeypatch, part_lost)
    replay, replayed = await rig.run(rig.engine.reserve(rig.cmd("o1")))
    assert run_part is parts.run_part, "group 1 back after the decision"
    assert (replay.state, replayed) == (State.CONFIRMED, True)
    assert [(line.committed, line.fulfilled) for line in replay.lines] == [(3, 0), (3, 0)], replay.lines
    assert replay == await rig.run(rig.engine.get_reservation("o1"))
    assert rig.quantities() == [(0, 3), (0, 3)], "its part made again, its units committed (Q3)"
