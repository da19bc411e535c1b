"""``atp_channel_write_failures_total`` says why a channel write failed, as the log's appends do:
a full Redis, a slow one, one gone and a newer owner each need a different act of the operator.
Real redis-server, real gRPC server, time held still by a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rx

from atp_service import ManualClock
from atp_service.metrics import APPEND_FAILURE_REASONS
from atp_service.storage.channel_store import WriteRefused, write_failure_reason
from tests.atp_service.channel_helpers import fact, one_dc_market, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
THROTTLE_MS = 60_000
ESTATE = one_dc_market(THROTTLE_MS, 100.0)


async def test_a_full_redis_refusing_a_channel_write_counts_as_out_of_memory(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A sale waits for its throttle interval; Redis fills up (``maxmemory``, ``noeviction``) before
    it is due. Its write, and every fence of the settle after it, is refused: the counter had no
    reason, so the operator could not tell a full Redis from one gone. Each now counts as
    ``out_of_memory``, every other reason exported at 0 from the start; the change goes out once
    Redis has room again."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, ESTATE))
    registry = service.metrics.registry

    def failures(reason: str) -> float | None:
        return registry.get_sample_value("atp_channel_write_failures_total", {"reason": reason})

    assert {reason: failures(reason) for reason in APPEND_FAILURE_REASONS} == dict.fromkeys(
        APPEND_FAILURE_REASONS, 0.0)
    await client.record_events([fact("count", "COUNT", "sku-1", "dc-1", 50, T - 1000)])
    await wait_for_updates(redis_url, "market", 1)  # the baseline: its throttle interval starts
    await client.record_events([fact("sale", "SALE", "sku-1", "dc-1", 1, T)])
    desk = service.channels
    assert desk is not None
    await until(lambda: desk.feeds["market"].pending == 1, "the sale waiting for its throttle interval")
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.config_set("maxmemory", 1)  # full: every write that may grow it is refused OOM
        clock.advance(THROTTLE_MS)
        desk.poke()
        await until(lambda: (failures("out_of_memory") or 0) >= 2, "the write and a fence refused, counted")
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()
    updates = await wait_for_updates(redis_url, "market", 2)
    assert [(u.sku, u.quantity) for u in updates] == [("sku-1", 50), ("sku-1", 49)]
    others = {reason: failures(reason) for reason in APPEND_FAILURE_REASONS if reason != "out_of_memory"}
    assert others == dict.fromkeys(others, 0.0)


@pytest.mark.parametrize(("error", "reason"), [
    (WriteRefused("FENCED epoch 3 of atp:{avail}:owner was replaced by 4"), "fenced"),
    (WriteRefused("STALE channel writer token 3 was fenced by 4"), "refused"),
    (WriteRefused("TAKEN atp:{avail}:market: version 7 is not after 7"), "refused"),
    (rx.ResponseError("OOM command not allowed when used memory > 'maxmemory'. script: ab"), "out_of_memory"),
    (rx.TimeoutError("Timeout reading from socket"), "timeout"),
    (rx.ConnectionError("Connection closed by server."), "connection"),
    (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "refused"),
])
def test_each_channel_write_failure_has_its_reason_of_the_closed_set(error: BaseException, reason: str) -> None:
    assert write_failure_reason(error) == reason
    assert reason in APPEND_FAILURE_REASONS
