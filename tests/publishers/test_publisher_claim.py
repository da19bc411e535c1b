"""A new lease holder takes over every entry pending in its group, under whatever consumer name
it was read (replicas started with different ``--consumer`` values, a name changed between
versions): a stock-out read just before a rolling update's stop is delivered, never left
unpublished until its key changes again (C2, C4). Real Redis, a real local HTTP receiver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import script_item, to_fields
from publishers import JsonlAdapter, Publisher, PublisherMetrics, WebhookAdapter
from publishers._reading import READ_NEW
from tests.publishers.http_helpers import serve
from tests.publishers.test_publisher import SECRET
from tests.publishers.test_publisher_lease import Destination, config, never_backwards
from tests.publishers.test_publisher_trimmed import STREAM, _delivered_and_reading, delivered, desk_writes, value
from tests.waiting import until

GROUP = "webhook"


async def pending_by_consumer(client: aioredis.Redis) -> dict[str, int]:
    info: Any = await client.xpending(STREAM, GROUP)
    return {c["name"].decode(): int(c["pending"]) for c in info["consumers"]}


async def consumers(client: aioredis.Redis) -> set[str]:
    return {c["name"].decode() for c in await client.xinfo_consumers(STREAM, GROUP)}


def claimed(metrics: PublisherMetrics) -> float | None:
    return metrics.registry.get_sample_value("atp_publisher_claimed_total", {"channel": "web", "group": GROUP})


async def stopped_retrying(store: ChannelStore, url: str, down: Destination) -> None:
    """Publisher ``a`` reads what the desk wrote, its destination down: stopped while retrying, the
    entries of that read stay pending under its name (on purpose: not dead-lettered for a stop)."""
    first = Publisher(config(consumer="a", max_attempts=10_000), store.client, WebhookAdapter(url + "/in", SECRET),
                      PublisherMetrics())
    task = asyncio.create_task(first.run())
    await until(lambda: down.requests >= 2, "the first publisher retries its delivery")
    first.stop()
    await asyncio.wait_for(task, 10)
    assert await pending_by_consumer(store.client) == {"a": 2}


async def test_entries_left_pending_under_another_consumer_name_are_delivered_by_the_next_holder(
        store: ChannelStore) -> None:
    down, up = Destination(503), Destination()
    with serve(down.handle) as url_a, serve(up.handle) as url_b:
        await desk_writes(store, [value("s", 0, 1), value("t", 5, 2)])  # "s" sold out
        await stopped_retrying(store, url_a, down)

        metrics = PublisherMetrics()
        second = Publisher(config(consumer="b"), store.client, WebhookAdapter(url_b + "/in", SECRET), metrics)
        task = asyncio.create_task(second.run())
        try:
            await until(up.got(("s", 1)), "the stock-out read by publisher a is delivered by publisher b")
            await until(up.got(("t", 2)), "the other entry too")
            await until(_nothing_pending(store.client), "every entry acknowledged")
            assert claimed(metrics) == 2
            # Its pending list empty, the stopped publisher's name is removed: the list stays bounded.
            assert await consumers(store.client) == {"b"}
            await desk_writes(store, [value("t", 3, 3)])
            await until(up.got(("t", 3)), "new entries follow")
            never_backwards(up.versions())
        finally:
            second.stop()
            await asyncio.wait_for(task, 10)


def _nothing_pending(client: aioredis.Redis) -> Any:
    async def check() -> bool:
        return sum((await pending_by_consumer(client)).values()) == 0
    return check


async def test_entries_pending_under_another_name_and_trimmed_since_come_from_the_state_hash(
        store: ChannelStore) -> None:
    """XAUTOCLAIM drops trimmed entries from the pending list and returns their ids: their keys'
    newest values are delivered from the channel's state hash, not lost with them."""
    down, up = Destination(503), Destination()
    with serve(down.handle) as url_a, serve(up.handle) as url_b:
        await desk_writes(store, [value("s", 0, 1), value("t", 5, 2)])
        await stopped_retrying(store, url_a, down)
        await desk_writes(store, [value("u", 4, 3)])
        await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # both pending entries trimmed

        metrics = PublisherMetrics()
        second = Publisher(config(consumer="b"), store.client, WebhookAdapter(url_b + "/in", SECRET), metrics)
        task = asyncio.create_task(second.run())
        try:
            await until(up.got(("s", 1)), "the trimmed stock-out is delivered from the state hash")
            await until(up.got(("t", 2)), "the other trimmed entry too")
            await until(up.got(("u", 3)), "the entry after them")
            await until(_nothing_pending(store.client), "nothing left pending")
            assert await store.client.xlen(f"{STREAM}:dlq:{GROUP}") == 0
            # Caught up after the takeover, a step at a time with reads between: the mark goes once it is over.
            await until(_not_owed(store.client), "the resync owed is done")
            never_backwards(up.versions())
        finally:
            second.stop()
            await asyncio.wait_for(task, 10)


def _not_owed(client: aioredis.Redis) -> Any:
    async def check() -> bool:
        return not await client.exists(f"{STREAM}:redeliver-all:{GROUP}")
    return check


async def test_a_stop_while_resyncing_claimed_trimmed_entries_leaves_their_keys_owed(store: ChannelStore) -> None:
    """The claim took the trimmed ids out of the pending list: nothing in the stream says their keys
    are owed any more. A stop before they are delivered leaves a resync of every key owed, which the
    next holder (under a third name) carries out."""
    down, still_down, up = Destination(503), Destination(503), Destination()
    with serve(down.handle) as url_a, serve(still_down.handle) as url_b, serve(up.handle) as url_c:
        await desk_writes(store, [value("s", 0, 1), value("t", 5, 2)])
        await stopped_retrying(store, url_a, down)
        await desk_writes(store, [value("u", 4, 3)])
        await store.client.xtrim(STREAM, maxlen=1, approximate=False)

        second = Publisher(config(consumer="b", max_attempts=10_000), store.client,
                           WebhookAdapter(url_b + "/in", SECRET), PublisherMetrics())
        task = asyncio.create_task(second.run())
        await until(lambda: still_down.requests >= 2, "the second publisher retries the resync of the trimmed keys")
        second.stop()
        await asyncio.wait_for(task, 10)
        assert await pending_by_consumer(store.client) == {}, "the claim dropped the trimmed entries"
        assert await store.client.exists(f"{STREAM}:redeliver-all:{GROUP}"), "their keys stay owed"

        third = Publisher(config(consumer="c"), store.client, WebhookAdapter(url_c + "/in", SECRET),
                          PublisherMetrics())
        task = asyncio.create_task(third.run())
        try:
            await until(up.got(("s", 1)), "the stock-out is delivered by the next holder")
            await until(up.got(("t", 2)), "the other owed key too")
            await until(up.got(("u", 3)), "and what followed")
            await until(lambda: _no_key(store.client, f"{STREAM}:redeliver-all:{GROUP}"), "the resync owed is done")
            never_backwards(up.versions())
        finally:
            third.stop()
            await asyncio.wait_for(task, 10)


async def _no_key(client: aioredis.Redis, key: str) -> bool:
    return not await client.exists(key)


async def test_an_entry_read_under_another_name_after_the_takeover_is_delivered_within_a_lease(
        store: ChannelStore) -> None:
    """Reads are not fenced: a holder paused past its lease (or cut off, its XREADGROUP arriving
    late) can still read new entries into its own name after another took over, then notice the
    loss and deliver nothing. The new holder looks again at least once a lease: they are delivered."""
    up = Destination()
    with serve(up.handle) as url:
        await desk_writes(store, [value("t", 5, 1)])
        holder = Publisher(config(consumer="b"), store.client, WebhookAdapter(url + "/in", SECRET), PublisherMetrics())
        task = asyncio.create_task(holder.run())
        try:
            await until(up.got(("t", 1)), "the holder delivers")
            # The old holder's late read, as Redis sees it: in one transaction with the write, so that
            # it takes the entry before the holder's own blocked read is served.
            async with store.client.pipeline(transaction=True) as pipe:
                pipe.xadd(STREAM, to_fields(value("s", 0, 2)), id="2-0")  # type: ignore[arg-type]
                pipe.xreadgroup(GROUP, "old", {STREAM: ">"}, count=10)
                await pipe.execute()
            assert (await pending_by_consumer(store.client)).get("old") == 1
            await until(up.got(("s", 2)), "the stock-out the old holder read is delivered by the holder")
            await until(_nothing_pending(store.client), "and acknowledged")
        finally:
            holder.stop()
            await asyncio.wait_for(task, 10)


async def test_a_late_read_under_another_name_past_a_gap_leaves_the_holder_owing_it(
        store: ChannelStore, tmp_path: Path) -> None:
    """An old holder's late read (paused past its lease) took the group past entries trimmed unread:
    the holder's next read measured its gap from the group's position, which that read had moved past
    them, found none, and nothing but the old holder's mark said they were owed, a mark a holder whose
    first pass of the redelivery is over never looks at again: "b", a stock-out, was never delivered
    while it held the lease (C4). The gap is measured from the lower of this publisher's own position
    and the group's."""
    out, cfg = tmp_path / "feed.jsonl", config(group="jsonl", consumer="b", block_ms=60_000)
    await desk_writes(store, [value("a", 5, 1)])
    holder = Publisher(cfg, store.client, JsonlAdapter(out), PublisherMetrics())
    task = asyncio.create_task(holder.run())
    try:
        await until(lambda: _delivered_and_reading(store, out), "a delivered, the next read waiting")
        b, c, d = value("b", 0, 2), value("c", 3, 3), value("d", 4, 4)
        async with store.client.pipeline(transaction=True) as pipe:  # served before the holder's blocked read
            for u in (b, c):
                pipe.hset(store.state_key("web"), f"{u.sku}\t", script_item(u)[-1])
                pipe.xadd(STREAM, dict(to_fields(u)), id=f"{u.version}-0")  # type: ignore[arg-type]
            pipe.xtrim(STREAM, maxlen=1, approximate=False)  # "b" trimmed unread
            pipe.eval(READ_NEW, 2, STREAM, cfg.redeliver_all_key, cfg.group, "old", 10, 1)  # the late read: "c"
            pipe.hset(store.state_key("web"), "d\t", script_item(d)[-1])
            pipe.xadd(STREAM, dict(to_fields(d)), id="4-0")  # type: ignore[arg-type]
            await pipe.execute()
        await until(lambda: "d" in delivered(out), "the entry after the late read delivered")
        await until(lambda: "b" in delivered(out), "the stock-out trimmed before the late read delivered")
        assert delivered(out)["b"] == (0, 2, "OUT_OF_STOCK")
    finally:
        holder.stop()
        await desk_writes(store, [value("e", 1, 5)])  # ends the holder's wait for new entries
        await asyncio.wait_for(task, 10)
