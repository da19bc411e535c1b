"""A SHIPMENT fact naming an order spanning groups, on a real service and a real redis-server (``ownership = leases``,
one process serving both groups), where the part holding the id at the fact's group is another order's of that id: a
stale CONFIRMED copy (``_order_losses.stale``) of a part whose order was resolved and forgotten before this one opened,
its group back from older data (R7). The fact is stamped after this order opened, so it is this order's: it never
fulfils the other order's part, which the order's Release then releases (Q3, R4, R5; ``_order_shipments``)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from reservation import Limits, Reservation, State
from reservation import _orders as orders
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.app.leased_pair import stocked_pair
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

DAY_MS = Limits().retention_ms
SKEW_MS = Limits().fact_future_skew_ms
MARGIN_MS = Limits().retention_ms // 2
"""A SHIPMENT stamped this long or longer before the reservation it names was made is an earlier holder's (R4)."""


async def stale_part_in_place(service: AtpService, group: int) -> Reservation:
    """The order ``o``'s part at ``group`` replaced, through the group's shard (its log in Redis), by an earlier order's
    CONFIRMED part of its id (another ``order_ref``, its 3 units committed) last changed a retention before ``o``
    opened: what the group's keys back from data older than ``o``'s part hold (R7)."""
    engine = service.engine
    assert engine is not None
    mine = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert mine is not None and mine.state == State.HELD
    return await copy_in_place(service, group)


async def copy_in_place(service: AtpService, group: int) -> Reservation:
    """``stale_part_in_place`` for a part of any state: its units given back, the earlier order's copy (3 committed)
    saved in its place through the group's shard."""
    engine = service.engine
    assert engine is not None
    mine = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert mine is not None
    then = mine.created_at - DAY_MS
    copy = msgspec.structs.replace(mine, order_ref="first", state=State.CONFIRMED, created_at=then, updated_at=then,
                                   lines=tuple(msgspec.structs.replace(line, held=0, committed=line.granted)
                                               for line in mine.lines))

    def back(ledger: Any, _now: int) -> None:
        for line in mine.lines:
            ledger.move_hold(line.sku, line.location, -line.held, line.granted - line.committed)
        ledger.save(copy)

    await engine.actors[group].submit(back)
    return copy


async def test_a_shipment_of_the_order_leaves_another_order_s_stale_part_to_be_released_Q3_R4(
        start_service: ServiceFactory) -> None:
    """Defect (found by review): the fact fulfilled the earlier order's part (its unit out of committed) and stamped
    it changed now: no longer judged stale, the order's Release left its 2 other units committed for good, no
    order's, offered to nobody. The fact moves the stock alone, answered not fulfilled; the Release releases it."""
    clock = ManualClock(T0)
    service, client, engine, a, b = await stocked_pair(start_service, clock)
    assert (await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)).state == \
        pb.RESERVATION_STATE_HELD
    part_group = engine.place(b)
    assert engine.home_of("o") == engine.place(a) != part_group
    other = await stale_part_in_place(service, part_group)

    clock.advance(1_000)
    fact = receipt("ship-1", b, "S1", 1, clock.now_ms(), kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = "o"
    (shipped,) = await client.record_events([fact])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED, shipped
    assert shipped.detail.startswith("stock moved; reservation not fulfilled"), shipped
    assert engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group)) == other, \
        "the earlier order's part fulfilled by this order's shipment"

    await client.release("o")
    assert [(q.on_hand, q.reserved, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (5, 0, 0), (4, 0, 0)], "the earlier order's units committed for good"


@pytest.mark.parametrize("stamped", ["well before", "by a clock behind"])
async def test_a_shipment_stamped_well_before_the_order_opened_fulfils_nothing_of_its_own_part_Q3_R4(
        start_service: ServiceFactory, stamped: str) -> None:
    """Order o of 2 ``a`` (its home's group) and 3 ``b`` (another group), CONFIRMED, its part at ``b``'s group its
    own: an earlier order of the id forgotten whole (R5), nothing of it left. A SHIPMENT of 1 ``b`` naming o stamped
    half the retention before o opened is that earlier order's, late (E6 let it in): the stock moves alone, answered
    not fulfilled, where the part, o's own, took it (Q3). One stamped before o opened by more than
    ``fact_future_skew_ms`` (E7), by a source's clock behind the service's, is o's and fulfils it (it fulfilled
    nothing where the skew was the margin, o's unit committed for good)."""
    clock = ManualClock(T0 + 2 * SKEW_MS)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    assert (await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)).state == \
        pb.RESERVATION_STATE_HELD
    await client.confirm("o")
    part_group = engine.place(b)
    opened = engine.actors[engine.place(a)].ledger.reservation("o")
    assert opened is not None and engine.home_of("o") != part_group

    at = opened.created_at - (MARGIN_MS if stamped == "well before" else SKEW_MS + 1)
    fact = receipt("ship-1", b, "S1", 1, at, kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = "o"
    (shipped,) = await client.record_events([fact])
    assert shipped.outcome == pb.FACT_OUTCOME_APPLIED, shipped
    part = engine.actors[part_group].ledger.reservation(orders.part_id("o", part_group))
    assert part is not None and part.order_ref != "first"
    fulfilled = 0 if stamped == "well before" else 1
    assert shipped.detail.startswith(UNFULFILLED) == (not fulfilled), shipped
    assert [line.committed for line in part.lines] == [3 - fulfilled], "an earlier order's shipment fulfilled o"
    (again,) = await client.record_events([fact])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE, again  # applied once (E8)
    assert [(q.on_hand, q.committed) for q in await client.availability([(a, "S1"), (b, "S1")])] == [
        (5, 2), (4, 3 - fulfilled)]
