"""A Reserve whose lines span shards, decided once a hold on one of them is past its TTL and before
housekeeping's next pass (R2, R3): the hold holds nothing then, as for a Reserve of one shard
(``test_reserve_after_ttl``). Its units refused the spanning Reserve — a refusal its id replays for good
(R5) — while a Confirm of the hold at that moment answered EXPIRED. Each expiry is in its shard's entry
of the Reserve: a replay of the log gives what memory holds (E10)."""

from __future__ import annotations

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.engine.test_cancellation import _memory_equals_log, _one_sku_per_shard
from tests.conftest import ServiceFactory

HOUR_MS = 3_600_000


async def test_a_reserve_across_shards_takes_the_units_of_a_hold_whose_ttl_has_passed_R2_R3(
        start_service: ServiceFactory, redis_url: str) -> None:
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, maintenance_interval_ms=HOUR_MS)
    a, b = _one_sku_per_shard(service)[:2]
    await client.record_events([receipt("s1", a, "S1", 10), receipt("s2", b, "S1", 10)])
    assert (await client.reserve("r1", [(a, "S1", 10)], ttl_seconds=30)).state == pb.RESERVATION_STATE_HELD
    assert (await client.reserve("r1b", [(b, "S1", 10)], ttl_seconds=30)).state == pb.RESERVATION_STATE_HELD
    clock.advance(30_000)
    r2 = await client.reserve("r2", [(a, "S1", 10), (b, "S1", 10)])
    assert r2.state == pb.RESERVATION_STATE_HELD, r2  # was: REJECTED, both lines available 0
    assert [line.available for line in r2.lines] == [10, 10]
    for rid in ("r1", "r1b"):
        assert (await client.get_reservation(rid)).state == pb.RESERVATION_STATE_EXPIRED
    quantities = await client.availability([(a, "S1"), (b, "S1")])
    assert [(q.reserved, q.available) for q in quantities] == [(10, 0), (10, 0)]
    await _memory_equals_log(service, redis_url)  # E10: the expiries are in the Reserve's entries
