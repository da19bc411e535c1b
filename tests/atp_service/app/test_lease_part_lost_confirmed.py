"""R4, Q3 under leases (``ownership = leases``): a confirmed order spanning groups whose part Redis lost — the part's
group back from data older than the part (one Redis Cluster node restarted from an older AOF or RDB, a failover to
a lagging replica) — while the order's group kept the order CONFIRMED. On a real service and a real redis-server,
the part's group restored alone."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.leased_pair import stocked_pair
from tests.atp_service.app.test_lease_part_outlived import _at_s1, _group_restored, _group_saved
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_fulfilling_a_confirmed_order_whose_part_redis_lost_moves_the_part_s_units_out_of_on_hand_R4_Q3(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the order's view took the lost part for one resolved and forgotten, its lines shown fulfilled: b's 3
    units were committed nowhere (available 5 at b, sold again while the caller ships them), and a Fulfil answered
    FULFILLED with b's on_hand left at 5 — the 3 units that left offered again (oversold). The part is made again,
    its units committed (``order_part_committed_again``), and the Fulfil moves them out of on_hand (R4)."""
    _, client, engine, a, b = await stocked_pair(start_service)
    part_group = engine.place(b)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await _group_saved(direct, part_group)  # b stocked, no part of "o" there yet
        assert (await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)).state == \
            pb.RESERVATION_STATE_HELD
        assert engine.home_of("o") == engine.place(a) != part_group, "an order spanning groups: its part in b's"
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED  # told to the caller
        caplog.set_level(logging.ERROR, logger="atp_service")
        await _group_restored(direct, part_group, image)  # the part is gone, the order's record kept
    finally:
        await direct.aclose()

    async def part_gone() -> bool:  # the owner check finds the group's log short: taken again from what Redis holds
        return await _at_s1(client, b, "committed") == 0

    await until(part_gone, "the part's group serving what Redis holds (no part there)", 40)
    assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED
    assert (await _at_s1(client, a, "on_hand"), await _at_s1(client, b, "on_hand")) == (3, 2), \
        "the lost part's units never left on_hand"
    assert (await _at_s1(client, b, "committed"), await _at_s1(client, b, "available")) == (0, 2)
    said = [r for r in caplog.records if getattr(r, "event", None) == "order_part_committed_again"]
    assert said and said[0].shard == part_group, [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
