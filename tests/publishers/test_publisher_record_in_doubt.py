"""What a publisher delivered is what it names after a loss, also where the record of that delivery failed: Redis
going down (a failover's primary dying, a restart from older data) takes the answer to the record with it, and the
publisher goes on running. The destination holds the value all the same (C4: named, published again above it).
Real redis-server behind a TCP proxy that loses the record's answer; the real publisher."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import start_marker
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.publishers.test_publisher import config
from tests.publishers.test_publisher_redis_lost_lease import lower_after_higher
from tests.publishers.test_publisher_trimmed import STREAM, deliver_until, delivered, desk_writes, value
from tests.waiting import until

__all__ = ["proxy"]  # the fixture, used by name

RESTAMP, DELIVERED = f"{STREAM}:restamp", f"{STREAM}:delivered:jsonl"
RECORD = b"local ids_from"  # in the publisher's record script (``_lease.SETTLE``) alone
RETRY_S = 0.05


async def test_what_was_delivered_while_its_record_s_answer_was_lost_is_never_sent_older_and_is_named_C3_C4(
        store: ChannelStore, proxy: HoldingProxy, tmp_path: Path) -> None:
    """Defect: the versions delivered were known to the publisher only once their record was answered. Its answer lost
    (Redis went down while it was on its way, and came back from older data), ``b``'s version 3, delivered, was known
    nowhere: the publisher delivered the restored ``b`` = 3 at version 2 after it (C3), and the next run's marker
    (follows 2) named nothing, so the destination kept ``b`` = 9, which the service no longer holds (C4)."""
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1)])
    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK")})
    await desk_writes(store, [value("b", 3, 2)])
    image = await saved(store.client)  # what Redis comes back with: versions 1 and 2, the group at 1
    await desk_writes(store, [value("b", 9, 3)])  # the version Redis loses; read with 2, delivered in its place

    released = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the publisher's wait before it tries Redis again: held meanwhile
        if proxy.held:
            await released.wait()
        await asyncio.sleep(seconds)

    proxy.hold(RECORD, reset=True)  # the record of b's delivery: its answer lost, its command never run
    port = proxy._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
    publisher = Publisher(config(group="jsonl", redis_retry_s=RETRY_S), client, JsonlAdapter(out), PublisherMetrics(),
                          sleep=sleep)
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: proxy.held, "the record of b's delivery sent")
        assert delivered(out)["b"] == (9, 3, "IN_STOCK"), "delivered before its record"
        proxy.drop()
        proxy.hold()
        await restored(store.client, image, at_once=True)  # Redis lost version 3 (and the lease, the group's read)
        await store.write([("web", 100_000, [start_marker("web", 100, 2, 0)])])  # the service's next start
        released.set()

        async def past_the_marker() -> bool:
            groups: Any = await store.client.xinfo_groups(STREAM)
            info: Any = await store.client.xpending(STREAM, "jsonl")
            return groups[0]["last-delivered-id"] == b"100-0" and int(info["pending"]) == 0

        await until(past_the_marker, "the marker read and acknowledged")
        assert not task.done(), task
        assert lower_after_higher(out) == [], "a version delivered below one delivered before (C3)"
        assert await store.client.hgetall(RESTAMP) == {b"b\t": b"3"}, "b, delivered at the lost version 3, not named"
        assert await store.client.hget(DELIVERED, "b\t") == b"3", "recorded below what the destination holds"
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
