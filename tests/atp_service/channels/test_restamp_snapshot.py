"""A key the desk publishes again on a publisher's word (``channels/restamp.py``) stays in the channel's snapshot
while that write is on its way: the snapshot shows its last durable value until the new version is confirmed (C4:
only what is durable is published; a key shown absent is a key a consumer building its state believes gone).
Real service, real redis-server, and a proxy that holds the desk's write in flight (``HoldingProxy``) for as long
as the test says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from atp_service.storage.channel_script import WRITE
from tests.atp_service.channel_helpers import desk_served, fact, one_dc_market, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import test_config as make_config
from tests.waiting import until

T = 1_700_000_000_000
V0 = T * VERSIONS_PER_MS
"""The start marker's version, before the first update this start hands out (C3: a start's versions begin at its
clock's floor)."""
WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()  # the desk's write on the wire (EVALSHA)
RESTAMP = "atp:{avail}:market:restamp"
Kind = pb.WatchAvailabilityResponse
__all__ = ["proxy"]  # the fixture, used by name


async def _snapshot(client: AtpClient) -> tuple[int, dict[str, tuple[int, int]]]:
    """A watch's snapshot of ``market``: its version, and sku -> (quantity, version)."""
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    shown: dict[str, tuple[int, int]] = {}
    try:
        while (message := await call.read()).kind != Kind.KIND_SNAPSHOT_END:
            assert message.kind == Kind.KIND_SNAPSHOT, message
            shown.update((u.sku, (u.quantity, u.version)) for u in message.updates)
        return message.version, shown
    finally:
        call.cancel()


async def _forgotten(direct: aioredis.Redis) -> bool:
    return not await direct.exists(RESTAMP)


async def test_a_key_published_again_stays_in_the_snapshot_at_its_durable_value_until_confirmed_C4(
        proxy: HoldingProxy, redis_url: str, tmp_path: Path) -> None:
    """Defect: the desk took the key out of the feed's published values to offer it again as a baseline, so a
    snapshot taken while its write was on its way (a Redis slow to answer, a write in doubt) left it out entirely."""
    # A Redis timeout far above what the steps take: the held write ends when the test lands it.
    config = make_config(estate=write_estate(tmp_path, one_dc_market(1000, 1000.0)), input_streams=(),
                         redis_timeout_s=30.0)
    async with (desk_served(config, proxy.url, ManualClock(T)) as (_, desk, client),
                aioredis.Redis.from_url(redis_url) as direct):  # the publisher's naming, not through the proxy
        feed = desk.feeds["market"]
        await client.record_events([fact("c1", "COUNT", "sku-a", "dc-1", 40, T)])
        await until(lambda: feed.published_version == V0 + 1 and not feed.in_flight, "the baseline published", 30)

        proxy.hold(WRITE_SHA)
        await direct.hset(RESTAMP, "sku-a\t", str(V0 + 1))  # a publisher delivered it at a version Redis lost
        await until(lambda: len(proxy.held) == 1 and feed.in_flight == 1, "sku-a's new version on its way", 30)

        assert await _snapshot(client) == (V0 + 1, {"sku-a": (40, V0 + 1)}), "its durable value, not its new one"

        proxy.hold()
        await proxy.land(proxy.held[0])
        await until(lambda: feed.published_version == V0 + 2 and not feed.in_flight, "the new version confirmed", 30)
        assert await _snapshot(client) == (V0 + 2, {"sku-a": (40, V0 + 2)})
        again = [u for u in await stream_updates(redis_url, "market") if u.version == V0 + 2]
        assert [(u.sku, u.quantity, u.previous) for u in again] == [("sku-a", 40, None)], "a baseline: previous unknown"
        await until(lambda: _forgotten(direct), "the name forgotten once published above it", 30)
