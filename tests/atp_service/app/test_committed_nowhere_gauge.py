"""``atp_orders_committed_nowhere`` (alert ATPOrderCommittedNowhere) on a real service and a real redis-server
(``ownership = leases``): a CONFIRMED order spanning groups whose part is another order's confirmed part of its id
(its part's group back from older data, R7), kept (Q3): its units there committed nowhere. Counted while it is so,
by the process serving the order's home — found again by a process taking the groups from Redis — and no longer once
the order is resolved."""

from __future__ import annotations

from typing import Any

import grpc
import msgspec
import pytest

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Reservation, State
from reservation import _orders as orders
from tests.atp_service.app.leased_pair import LEASED, stocked_pair
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until


def nowhere(service: AtpService) -> float | None:
    return service.metrics.registry.get_sample_value("atp_orders_committed_nowhere")


def counted(service: AtpService) -> float | None:
    return service.metrics.registry.get_sample_value("atp_order_sagas_total", {"outcome": "committed_nowhere"})


async def another_order_s_part_in_place(service: AtpService, group: int) -> Reservation:
    """The order ``o``'s part at ``group`` replaced, through the group's shard (its log in Redis), by another order's
    CONFIRMED part of its id (1 unit, not the 3 this order asks there) changed now: what the group's keys back from
    data older than this order's part hold where the id was reserved again once its first order was forgotten (not
    ``stale``: its group's clock behind the home's)."""
    engine = service.engine
    assert engine is not None
    mine = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert mine is not None and mine.state == State.CONFIRMED
    other = msgspec.structs.replace(mine, lines=tuple(
        msgspec.structs.replace(line, requested=1, granted=1, committed=1) for line in mine.lines))

    def back(ledger: Any, now: int) -> None:
        for line in mine.lines:
            ledger.move_hold(line.sku, line.location, 0, 1 - line.committed)
        ledger.save(msgspec.structs.replace(other, updated_at=now))

    await engine.actors[group].submit(back)
    return other

async def confirmed_then_committed_nowhere(service: AtpService, client: Any, a: str, b: str) -> tuple[int, Reservation]:
    """Order "o" (2 of ``a``, 3 of ``b``) reserved and confirmed, then another order's confirmed part of its id put in
    the place of its part at ``b``'s group (``another_order_s_part_in_place``): (that group, the other order's part)."""
    await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
    await client.confirm("o")
    engine = service.engine
    assert engine is not None
    part_group = engine.place(b)
    return part_group, await another_order_s_part_in_place(service, part_group)


async def test_an_order_committed_nowhere_is_counted_while_it_is_and_no_longer_once_released(
        start_service: ServiceFactory) -> None:
    """Defect: ``ATPOrderCommittedNowhere`` followed ``atp_order_sagas_total{outcome="committed_nowhere"}``, a count
    of each order once: the alert resolved an hour after the count whatever became of the order, its units still
    committed nowhere, and a process finding it again (restarted, a group taken over) counted nothing new. A gauge
    of the orders committed nowhere now: 1 while it is, found again after a restart, 0 once the order is released."""
    clock = ManualClock(T0)
    service, client, engine, a, b = await stocked_pair(start_service, clock)
    await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
    assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED
    part_group = engine.place(b)
    assert engine.home_of("o") == engine.place(a) != part_group
    assert nowhere(service) == 0
    other = await another_order_s_part_in_place(service, part_group)

    for _ in range(2):  # found at each read, counted once
        assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED
    assert (nowhere(service), counted(service)) == (1, 1), "the order's units committed nowhere"
    assert engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group)) == \
        msgspec.structs.replace(other, updated_at=engine.actors[part_group].ledger.reservation(
            orders.part_id("o", part_group)).updated_at), "the other order's part kept (Q3)"

    await service.stop()  # a process taking the groups from Redis finds it again: its check of confirmed orders
    service, client = await start_service(clock=clock, port=held_port(), **LEASED)
    engine = service.engine
    assert engine is not None

    async def found_again() -> bool:  # housekeeping (run when the test says) checks the groups' confirmed orders
        await engine.run_maintenance()
        return nowhere(service) == 1

    await until(found_again, "the order found committed nowhere again", 60)

    released = await client.release("o")  # R3: CONFIRMED -> RELEASED, nothing of it shipped (R4)
    assert released.state == pb.RESERVATION_STATE_RELEASED, released
    assert [(line.released, line.fulfilled) for line in released.lines] == [(2, 0), (3, 0)], released
    assert (nowhere(service), counted(service)) == (0, 1), "resolved: no units of it to commit anywhere"


async def test_held_by_hand_and_its_line_there_released_the_order_is_no_longer_counted(
        start_service: ServiceFactory) -> None:
    """The runbook's way out (docs/OPERATIONS.md, ``order_part_committed_again``): the order's units at that group held
    by hand under another id, confirmed, and its line there released — it is no longer committed nowhere, the alert
    resolves (no silence, which hid every other such order); the other order's part untouched, its other line too."""
    service, client, engine, a, b = await stocked_pair(start_service)
    part_group, other = await confirmed_then_committed_nowhere(service, client, a, b)
    await client.get_reservation("o")
    assert nowhere(service) == 1
    await client.reserve("o-by-hand", [(b, "S1", 3)], ttl_seconds=60)
    assert (await client.confirm("o-by-hand")).state == pb.RESERVATION_STATE_CONFIRMED
    released = await client.release("o", [(b, "S1", 3)], "its-line-there")
    assert released.state == pb.RESERVATION_STATE_CONFIRMED
    assert [(line.committed, line.released) for line in released.lines] == [(2, 0), (0, 3)], released
    assert nowhere(service) == 0, "still counted: the alert fires on, silenced"
    assert engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group)).lines == other.lines
    assert engine.actors[part_group].ledger.quantities(b, "S1").committed == 1 + 3, "the other's and by hand"


async def test_a_fulfil_naming_its_line_there_is_refused_naming_it_never_told_done(
        start_service: ServiceFactory) -> None:
    """Defect (found by review): a Fulfil naming the order's line at the group whose part is another order's was
    answered done, the line shown committed still in that very answer (no part holds those units, R4; the order's
    record keeps only what its steps released). Refused INVALID_FIELD naming ``lines[0].quantity``, nothing changed:
    the order still counted committed nowhere, the other order's part untouched."""
    service, client, engine, a, b = await stocked_pair(start_service)
    part_group, other = await confirmed_then_committed_nowhere(service, client, a, b)
    before = await client.get_reservation("o")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.fulfill("o", [(b, "S1", 3)], "ship-there")
    said = typed(err.value).refusal
    assert (said.code, said.reason, [v.field for v in said.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["lines[0].quantity"]), said
    assert await client.get_reservation("o") == before and nowhere(service) == 1
    assert engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group)).lines == other.lines


async def test_a_whole_fulfil_is_refused_naming_its_lines_never_told_done_nor_uncounted(
        start_service: ServiceFactory) -> None:
    """Defect (found by review): a Fulfil of the whole order was answered FULFILLED, nothing moved out of ``on_hand``
    at the group whose part is another order's (the units left the warehouse, offered again: Q1, Q5, R4), and the
    order was no longer counted committed nowhere (the alert gone). Refused INVALID_FIELD naming ``lines``, nothing
    changed: still counted, the stock and the other order's part untouched."""
    service, client, engine, a, b = await stocked_pair(start_service)
    part_group, other = await confirmed_then_committed_nowhere(service, client, a, b)
    before = await client.get_reservation("o")
    stock = [engine.actors[engine.place(sku)].ledger.quantities(sku, "S1") for sku in (a, b)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.fulfill("o")
    said = typed(err.value).refusal
    assert (said.code, said.reason, [v.field for v in said.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["lines"]), said
    assert await client.get_reservation("o") == before and nowhere(service) == 1
    assert [engine.actors[engine.place(sku)].ledger.quantities(sku, "S1") for sku in (a, b)] == stock
    assert engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group)).lines == other.lines


@pytest.mark.parametrize(("own_first", "why"), [(True, "5 exceeds the 2 units committed"),
                                              (False, "committed nowhere")], ids=["own_first", "nowhere_first"])
async def test_a_fulfil_refusing_several_lines_names_the_first_of_them(
        start_service: ServiceFactory, own_first: bool, why: str) -> None:
    """Defect: a Fulfil naming two lines of an order committed nowhere, each refused — its line at the home asking
    more than committed there, its line at the group whose part is another order's committed nowhere — named the
    later line (``lines[1].quantity``) wherever it stood: the check of lines committed nowhere ran before the rules'
    check of every line. The first line at fault is named (the lowest n), whichever check refuses it; nothing
    changed."""
    service, client, _, a, b = await stocked_pair(start_service)
    await confirmed_then_committed_nowhere(service, client, a, b)
    before = await client.get_reservation("o")
    asked = [(a, "S1", 5), (b, "S1", 3)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.fulfill("o", asked if own_first else asked[::-1], "two-refused")
    said = typed(err.value).refusal
    assert (said.code, said.reason, [v.field for v in said.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["lines[0].quantity"]), said
    assert why in said.message, said
    assert await client.get_reservation("o") == before and nowhere(service) == 1


async def test_its_units_held_by_hand_as_far_as_they_go_the_rest_shown_oversold_once_shipped_Q5(
        start_service: ServiceFactory) -> None:
    """The runbook (docs/OPERATIONS.md, ``order_part_committed_again``) where the Reserve by hand is refused: the
    order's 3 units at ``b`` were offered while committed nowhere, and a shopper holds 3 of them meanwhile (1 of the 5
    left, the other order's part committing 1): REJECTED, its line's ``available`` 1. That one held and confirmed by
    hand (nothing offered there now), the order's line there released (the alert resolves); when the order's units
    ship, its SHIPMENT moves the stock alone and the unit held by hand is released: the 2 units short show oversold
    (Q5: ``reserved + committed`` above ``on_hand``, ``atp_oversold_units``), never hidden."""
    service, client, engine, a, b = await stocked_pair(start_service)
    await confirmed_then_committed_nowhere(service, client, a, b)
    opened = engine.actors[engine.place(a)].ledger.reservation("o")
    assert opened is not None
    await client.get_reservation("o")
    assert (await client.reserve("shopper", [(b, "S1", 3)], ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD
    refused = await client.reserve("o-by-hand", [(b, "S1", 3)], ttl_seconds=60)
    assert refused.state == pb.RESERVATION_STATE_REJECTED, refused
    assert [(line.outcome, line.available) for line in refused.lines] == [(pb.LINE_OUTCOME_INSUFFICIENT, 1)]
    held = await client.reserve("o-by-hand-1", [(b, "S1", 1)], ttl_seconds=60)
    assert held.state == pb.RESERVATION_STATE_HELD, held
    assert (await client.confirm("o-by-hand-1")).state == pb.RESERVATION_STATE_CONFIRMED
    await client.release("o", [(b, "S1", 3)], "its-line-there")
    assert nowhere(service) == 0, "the alert fires on"
    (there,) = await client.availability([(b, "S1")])
    assert (there.on_hand, there.reserved, there.committed, there.available) == (5, 3, 2, 0), there

    shipped = receipt("ship-o-b", b, "S1", 3, opened.created_at, kind=pb.FACT_KIND_SHIPMENT)
    shipped.reservation_id = "o"
    (outcome,) = await client.record_events([shipped])
    assert outcome.outcome == pb.FACT_OUTCOME_APPLIED, outcome
    await client.release("o-by-hand-1")  # the units left once: with the order's SHIPMENT
    (there,) = await client.availability([(b, "S1")])
    assert (there.on_hand, there.reserved, there.committed) == (2, 3, 1), there

    async def shown_oversold() -> bool:
        await engine.run_maintenance()
        return service.metrics.registry.get_sample_value("atp_oversold_units") == 2

    await until(shown_oversold, "the 2 units short shown oversold", 30)
