"""R7 and C4 after Redis came back from older data (a primary restarted from an older AOF or RDB, a
failover to a replica that lagged): a fence still makes a late landing impossible.

Such a Redis holds each fence at its older value, below the token the instance's writes go on carrying:
nothing was lost, so nothing tells the instance, and it goes on writing. A fence that only INCRed the
stored value then stayed at or below that token, and a write sent with it — its reply lost, the script
still on its way — landed after the settle had read the log and decided it had not: memory without an
entry Redis holds, a shard serving without it until a restart brings it back (the simulation's
``--lose-tail`` seed 42). The older data is made as ``tests/atp_service/app/test_redis_lost_tail.py``
makes it: every key DUMPed, then RESTOREd.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from atp_service.storage.channel_store import ChannelStore, WriteRefused
from atp_service.storage.durability import landed_of
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log import LogStore, connect
from reservation import ChannelUpdate, StockStatus
from tests.atp_service.app.test_redis_lost_tail import restored, saved

T = 1_700_000_000_000


async def test_a_settle_after_redis_came_back_from_older_data_fences_what_was_sent_before_it(
        store: LogStore) -> None:
    await store.submit(0, 1, b"one")
    image = await saved(store.client)  # the fence not raised yet
    await store.fence(0)  # a settle after the save: the instance's writes carry the raised token
    await restored(store.client, image)  # Redis comes back from the save: entry 1 kept, the fence older
    late = LogStore(store.client, "t:", pipeline_max=64)  # plays an append sent now, its reply lost
    late.epochs, late._tokens = dict(store.epochs), dict(store._tokens)
    doubt: Any = [(2, None, b"in doubt")]
    assert await landed_of(store, 0, 1, doubt) == []  # the settle: fenced, then read: not landed
    with pytest.raises(RedisError, match="STALE"):
        await late.submit(0, 2, b"in doubt")  # arriving now, it must not land after that answer
    await store.submit(0, 2, b"two")  # the shard's next entry takes the place
    assert [fields[b"e"] for _, fields in await store.client.xrange("t:{g0}:log")] == [b"one", b"two"]


def _update(sku: str, version: int) -> ChannelUpdate:
    return ChannelUpdate("web", sku, "DC", 5, None, StockStatus.IN_STOCK, version, T, T)


async def test_a_channel_fence_after_redis_came_back_from_older_data_refuses_what_was_sent_before_it(
        redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    await client.set(Keyspace("t:").owner(CHANNELS), 1)
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await store.write([("web", 1000, [_update("A", 1)])])
        image = await saved(direct)
        await store.fence()  # a settle after the save
        await restored(direct, image)
        late = ChannelStore(client, "t:", epoch=lambda: 1)  # the desk's write sent now, its reply lost
        late.token = store.token
        await store.fence()  # its settle
        with pytest.raises(WriteRefused, match=r"^STALE"):
            await late.write([("web", 1000, [_update("B", 2)])])
        assert await store.last_version("web") == 1
        await late.aclose()  # its write connections
    finally:
        await direct.aclose()
        await store.aclose()  # its write connections and the client
