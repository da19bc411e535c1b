"""An order's id reserved again with the same content once its first order was forgotten (R5: past its retention, a
new attempt), then the other group's Redis back from data older than the new order's part there (R7: a Redis Cluster
node restarted from an older save), holding the first order's shipped part in its place. On a real service and a real
redis-server (``ownership = leases``, one process serving both groups): that part is the first order's, never read as
the new order's line (R3, R4, Q3)."""

from __future__ import annotations

import grpc
import pytest
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

RETENTION_MS = Limits().retention_ms
AHEAD_MS = RETENTION_MS // 4 - 60_000
"""How far the other group's clock runs ahead of the home's: under a quarter of the retention (two gaps the service
allows between hosts' clocks, each under an eighth of it, added up where groups move)."""


@pytest.mark.parametrize("ahead_ms", [0, 60_000, AHEAD_MS])
async def test_an_earlier_order_s_shipped_part_back_from_older_data_is_never_the_new_order_s_line_R3_R4_Q3(
        start_service: ServiceFactory, redis_url: str, ahead_ms: int) -> None:
    """Defect (found by review): order ``o`` (2 of ``a`` at its home's group, 2 of ``b`` at the other) shipped whole,
    a save of ``b``'s group taken, and a retention later ``o`` forgotten at both groups; ``o`` reserved again with the
    same content (HELD, 2 held at ``b``), then ``b``'s group back from that save: the new order's part there gone, the
    first order's FULFILLED part in its place. That part, resolved a retention before the new order opened, was read
    as the new order's own (a same-content part counted its own up to a retention and a half before it opened, though
    its Reserve step reserves anew one resolved half a retention before): the order read with its ``b`` line shipped,
    and its Confirm answered CONFIRMED with nothing held nor committed at ``b`` for it — 2 units its caller will ship
    offered to others (oversold), shown nowhere as committed nowhere. Its hold at ``b`` is gone: the Confirm gives it
    up whole (EXPIRED), as for any other order's part found in its place. So too where ``b``'s group's clock runs
    ahead of the home's (``ahead_ms``: a minute, or just under a quarter of the retention; ``b``'s group came to this
    process from one whose clock ran that far ahead, ``GroupClock``): the first order's part, stamped by it, is then
    less than a retention older than the new order by the home's clock, though the home forgot its order a retention
    after — counted the new order's own (under a retention), it was read as its line shipped, Confirm CONFIRMED."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock)
    home, group = engine.place(a), engine.place(b)
    engine.actors[group].clock = GroupClock(clock, clock.now_ms() + ahead_ms)  # what taking it counted on from
    asked = [(a, "S1", 2), (b, "S1", 2)]
    await client.reserve("o", asked, ttl_seconds=60)
    await client.confirm("o")
    await client.fulfill("o")
    direct = aioredis.Redis.from_url(redis_url)
    try:
        older = await _group_saved(direct, group)  # b's group holding the first order's FULFILLED part
        clock.advance(RETENTION_MS + 1)
        await engine.run_maintenance()  # eviction: the first order forgotten at both groups
        assert engine.actors[home].ledger.reservation("o") is None
        assert engine.actors[group].ledger.reservation(orders.part_id("o", group)) is None
        again = await client.reserve("o", asked, ttl_seconds=60)
        assert (again.state, again.replayed) == (pb.RESERVATION_STATE_HELD, False), again
        await _group_restored(direct, group, older)  # the new order's part there gone, the first's back
    finally:
        await direct.aclose()

    async def back() -> bool:  # the owner check finds b's log short: taken again from Redis
        part = engine.actors[group].ledger.reservation(orders.part_id("o", group))
        return await _at_s1(client, b, "reserved") == 0 and part is not None and part.state == State.FULFILLED

    await until(back, "b's group serving what Redis holds (the first order's part)", 40)
    read = await client.get_reservation("o")
    assert [line.fulfilled for line in read.lines] == [0, 0], read
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.confirm("o")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_EXPIRED
    assert (await _at_s1(client, a, "reserved"), await _at_s1(client, a, "committed")) == (0, 0), "a's hold kept"
