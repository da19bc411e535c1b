"""An order whose home lost its record whole (Redis took the home's group back to before the order opened, R7) while
a part of it in another group was confirmed and shipped, its Reserve retried: the order is opened again at its home
and its parts reserved — its own shipped part replayed (resolved less than half the retention before, by its group's
clock) — and is decided again from them, CONFIRMED (R3, R5, Q3). On a real service and a real redis-server
(``ownership = leases``, one process serving both groups), the home group's clock ahead of the other group's by up
to half the retention, past the gaps between hosts' clocks the service allows (each under an eighth of it): the home
group came back to this process from one whose clock ran that far ahead, and counts on from what that one stamped
(``GroupClock``). And the
converse: a new order of an id whose earlier order was forgotten, never decided again from that order's part."""

from __future__ import annotations

import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine.clock import GroupClock
from reservation import Limits, State
from reservation import _orders as orders
from tests.atp_service.app.leased_pair import stocked_pair
from tests.atp_service.app.test_lease_part_outlived import _at_s1, _group_restored, _group_saved
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory
from tests.waiting import until

HALF_MS = Limits().retention_ms // 2
AHEAD_MS = HALF_MS - 60_000
"""How far the home group's clock runs ahead of the other group's: under half the retention (past the gaps the
service allows between hosts' clocks, each under an eighth of it: the order's own part is replayed all the same)."""
QUARTER_AHEAD_MS = Limits().retention_ms // 4 - 60_000
"""Two gaps the service allows between hosts' clocks (each under an eighth of the retention), added up where groups
moved."""


async def test_an_order_opened_again_by_a_home_clock_ahead_is_decided_again_from_its_shipped_part_R3_R5_Q3(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Defect (found by review): order ``o`` (2 of ``a`` at its home's group, 3 of ``b`` at the other) confirmed and
    its ``b`` line shipped, then the home's group back from before the order opened (its record and ``a``'s part
    gone); the OMS retries its Reserve two minutes later. ``b``'s group, judging by its own clock, replays the
    order's FULFILLED part (resolved two minutes ago); but deciding the order, that part was judged by the order's
    opening just now by its home's clock, nearly half a retention ahead, and taken for an earlier order's
    (``forgotten``): no proof of a confirmation. The order was decided as a Reserve decides it — the shipped part
    holds nothing, so ``a``'s new hold was released and the order recorded REJECTED: its caller, who was told
    CONFIRMED and shipped ``b``, told REJECTED, and ``a``'s 2 units it will ship offered to others (oversold). A
    part the order's own Reserve step replayed is its own: decided again CONFIRMED, ``a``'s units committed."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    home, group = engine.place(a), engine.place(b)
    asked = [(a, "S1", 2), (b, "S1", 3)]
    direct = aioredis.Redis.from_url(redis_url)
    try:
        before = await _group_saved(direct, home)  # the home's group before the order opened
        assert (await client.reserve("o", asked, ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD
        assert engine.home_of("o") == home != group, "an order spanning groups, its home a's"
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED  # told to the caller (the OMS)
        assert (await client.fulfill("o", [(b, "S1", 3)], "ship-b")).state == pb.RESERVATION_STATE_CONFIRMED
        await _group_restored(direct, home, before)  # the order's record and a's part gone, b's part kept
    finally:
        await direct.aclose()

    async def home_lost_it() -> bool:  # the owner check finds the home's log short: taken again from Redis
        return await _at_s1(client, a, "committed") == 0 and engine.actors[home].ledger.reservation("o") is None

    await until(home_lost_it, "the home's group serving what Redis holds (no record of the order)", 40)
    engine.actors[home].clock = GroupClock(clock, clock.now_ms() + AHEAD_MS)  # what taking it back counts on from
    clock.advance(120_000)
    shipped = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert shipped is not None and shipped.state == State.FULFILLED

    again = await client.reserve("o", asked, ttl_seconds=60)
    assert again.state != pb.RESERVATION_STATE_REJECTED, again
    order = await client.get_reservation("o")
    assert order.state == pb.RESERVATION_STATE_CONFIRMED, order
    assert [(line.committed, line.fulfilled) for line in order.lines] == [(2, 0), (0, 3)], order
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, a, "available")) == (2, 3), "a offered again"
    assert (await _at_s1(client, b, "committed"), await _at_s1(client, b, "available")) == (0, 2), "b held again"


async def test_a_new_order_is_never_decided_confirmed_from_an_earlier_order_s_part_its_step_replayed_R3_R5(
        start_service: ServiceFactory, redis_url: str) -> None:
    """Order ``o`` shipped whole, ``b``'s group stamping it from a host whose clock ran ``QUARTER_AHEAD_MS`` ahead;
    the home's group then went to a host that far ahead too, and forgot ``o`` a retention later by
    its clock; ``b``'s group went to a host on time (its clock counts on from the host's, its log stamped before: no
    gap kept, ``GroupClock``) — every two hosts' clocks within the gap allowed. ``o`` reserved again, the same content:
    a new order (the first forgotten), its caller never confirmed it. ``b``'s group, judging by its clock, finds the
    first order's FULFILLED part resolved more than half the retention ago (the retention less twice
    ``QUARTER_AHEAD_MS``, four gaps the service allows, each under an eighth of it) and reserves it anew: the new
    order is HELD, never decided again CONFIRMED from that part (R3, R5). Where the gaps add up past half the
    retention, the part was replayed and taken for proof of the new order's confirmation: ``a``'s units committed for
    an order never confirmed, nothing held at ``b``."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    home, group = engine.place(a), engine.place(b)
    asked = [(a, "S1", 2), (b, "S1", 2)]
    engine.actors[group].clock = GroupClock(clock, clock.now_ms() + QUARTER_AHEAD_MS)  # b's group ahead
    await client.reserve("o", asked, ttl_seconds=60)
    await client.confirm("o")
    await client.fulfill("o")
    engine.actors[home].clock = GroupClock(clock, clock.now_ms() + QUARTER_AHEAD_MS)  # the home's too
    clock.advance(Limits().retention_ms + 1 - QUARTER_AHEAD_MS)
    await engine.run_maintenance()  # the first order forgotten at its home, by its clock
    assert engine.actors[home].ledger.reservation("o") is None
    shipped = engine.actors[group].ledger.reservation(orders.part_id("o", group))
    assert shipped is not None and shipped.state == State.FULFILLED  # not evicted yet by b's group's clock
    engine.actors[group].clock = GroupClock(clock, shipped.updated_at)  # b's group on a host on time

    again = await client.reserve("o", asked, ttl_seconds=60)
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_HELD  # never recorded CONFIRMED
    assert (again.state, again.replayed) == (pb.RESERVATION_STATE_HELD, False), again
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, b, "reserved")) == (0, 2), "b held anew"
