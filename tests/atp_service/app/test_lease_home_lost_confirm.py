"""R3, Q3 under leases (``ownership = leases``): an order spanning groups is confirmed at its home first (the
change recorded pending), then in every part. Redis losing the home group's tail (its keys back from older
data: one Redis Cluster node restarted from an older AOF or RDB, a failover to a lagging replica) takes the
order's record back to HELD, with its TTL, while a part in another group stays CONFIRMED — its units committed
for a paid order (Q3: they never expire). On a real service and a real redis-server, the home's group restored
alone."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.app.test_lease_part_outlived import _at_s1, _group_restored, _group_saved, _order_over_two_groups
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory
from tests.waiting import until


async def _home_lost_its_confirmation(start_service: ServiceFactory, redis_url: str
                                      ) -> tuple[ManualClock, object, AtpClient, str, str]:
    """Order "o" (2 of SKU a, its home's group; 3 of SKU b, a part in the other group) confirmed, then the home's
    group back from when the order was held: the record HELD again (its TTL 60 s), its part there held, b's part
    CONFIRMED. (clock, engine, client, a, b)."""
    clock = ManualClock(T0)
    _service, client, engine, a, b, _part_group = await _order_over_two_groups(start_service, clock)
    home = engine.place(a)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await _group_saved(direct, home)
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED  # told to the caller (the OMS)
        assert (await _at_s1(client, a, "committed"), await _at_s1(client, b, "committed")) == (2, 3)
        await _group_restored(direct, home, image)  # the home's confirmation is gone, the part's at b kept
    finally:
        await direct.aclose()

    async def held_again() -> bool:  # the owner check finds the home's log short: taken again from what Redis holds
        return await _at_s1(client, a, "reserved") == 2

    await until(held_again, "the home's group serving what Redis holds (the order HELD, its part there held)", 40)
    assert await _at_s1(client, b, "committed") == 3
    return clock, engine, client, a, b


async def test_an_order_whose_home_lost_its_confirmation_is_not_expired_when_its_ttl_passes_R3_Q3(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect (found by review): when the TTL of the record Redis took back to HELD passed, the home expired the
    order and sent each part an EXPIRE share, and a part took an EXPIRE share of a CONFIRMED part for a release:
    the 3 units b's part had committed for the confirmed (paid) order were offered again (available 5 at b) while
    the caller, told CONFIRMED, ships them — oversold (Q5, R3: only HELD -> EXPIRED; Q3: committed units never
    expire). A confirmed part is proof that the home recorded the confirmation (R3: a part is confirmed only by a
    CONFIRM its home recorded pending first): the confirmation is carried through again (the order CONFIRMED, its
    held part confirmed, log event ``order_confirmation_restored``), never expired."""
    clock, engine, client, a, b = await _home_lost_its_confirmation(start_service, redis_url)
    caplog.set_level(logging.ERROR, logger="atp_service")
    clock.advance(61_000)  # past the TTL of the record Redis holds

    async def confirmed_again() -> bool:
        await engine.run_maintenance()  # type: ignore[attr-defined]  # the order's expiry comes due at its home
        return await _at_s1(client, a, "committed") == 2

    await until(confirmed_again, "the order's confirmation carried through again by its expiry", 20, every_s=0.05)
    assert await _at_s1(client, b, "committed") == 3, "a confirmed part's committed units released by an expiry"
    assert (await _at_s1(client, a, "available"), await _at_s1(client, b, "available")) == (3, 2)
    assert await _at_s1(client, a, "reserved") == 0
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED
    said = [r for r in caplog.records if getattr(r, "event", None) == "order_confirmation_restored"]
    assert said and said[0].reservation_id == "o", [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
    assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED  # the paid order ships whole


async def test_an_order_whose_home_lost_its_confirmation_is_read_confirmed_and_released_only_on_request_R3(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A read before the TTL passes (whatever drives the order on) carries the confirmation through as well: the
    caller told CONFIRMED reads CONFIRMED, not HELD (R3: resolved once); and only a Release gives the committed
    units back (R3: CONFIRMED -> RELEASED)."""
    _clock, _engine, client, a, b = await _home_lost_its_confirmation(start_service, redis_url)
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, b, "committed")) == (2, 3)
    assert (await client.release("o")).state == pb.RESERVATION_STATE_RELEASED
    assert (await _at_s1(client, a, "available"), await _at_s1(client, b, "available")) == (5, 5)
