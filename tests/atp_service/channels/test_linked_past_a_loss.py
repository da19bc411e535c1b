"""Redis back from older data after a settle of a write in doubt found it not landed: the desk's next write begins
with a marker linked (``follows``) to the newest version the settle read (``RunFeed.lost_past``), and the write
script took any linked entry for one following on. Written on a stream that no longer holds that version, a
subscriber that had read the lost versions sat exactly at ``follows`` and crossed the marker untold, keeping their
values for good (C3, C4). The script refuses it (LOST), as it refuses an unlinked entry past a loss; and the settle
of a second write in doubt finds such a loss too (``lost_under``), the first having moved the run's link. A start's
marker is refused too where Redis lost versions after the start read the stream (``StartMarker.reached``).

An operator's ``XDEL`` of the newest entry, or a stream made anew empty (a publisher's ``XGROUP CREATE ... MKSTREAM``),
is no loss: a start's marker linked to the version Redis last handed out is written there, restart after restart, and
the entry following on from a deleted one is written too."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from atp_service.channels.desk import lost_under
from atp_service.channels.feeds import RunFeed
from atp_service.storage.channel_store import ChannelStore, StreamLost
from atp_service.storage.channel_wire import start_marker
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log import connect
from atp_service.storage.resp import seq_of
from reservation import ChannelUpdate, FeedPolicy, StockStatus
from tests.atp_service.app.test_redis_lost_tail import restored, saved

T = 1_700_000_000_000


def _update(sku: str, quantity: int, version: int) -> ChannelUpdate:
    return ChannelUpdate("web", sku, "DC", quantity, None, StockStatus.IN_STOCK, version, T, T)


async def _store(client: aioredis.Redis) -> ChannelStore:
    await client.set(Keyspace("t:").owner(CHANNELS), 1)
    return ChannelStore(client, "t:", epoch=lambda: 1)


async def _versions(client: aioredis.Redis, store: ChannelStore) -> list[int]:
    return [seq_of(i) for i, _ in await client.xrange(store.stream("web"))]


async def test_a_marker_linked_to_a_version_redis_lost_is_refused_and_writes_nothing_C4(redis_url: str) -> None:
    """Versions 1-3 published, a subscriber read 3; a write in doubt settled as not landed (the stream at 3), so the
    next write is a marker at 10 that follows 3; Redis then came back from data holding version 1 alone."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        image = await saved(client)
        await store.write([("web", 1000, [_update("B", 5, 2), _update("C", 5, 3)])])
        await restored(client, image, at_once=True)
        with pytest.raises(StreamLost, match=r"^LOST .*version 10 .*follows 3"):
            await store.write([("web", 1000, [start_marker("web", 10, 3, T, settled=True), _update("A", 0, 11)])])
        assert await _versions(client, store) == [1], "nothing of it written"
        assert set(await client.hkeys(store.state_key("web"))) == {b"A\tDC"}
    finally:
        await store.aclose()


async def test_a_start_s_marker_is_refused_where_redis_lost_versions_after_the_start_read_them_C4(
        redis_url: str) -> None:
    """Versions 1-3 published, a subscriber read 3; a start read the channel (its stream at 3, B and C in its state
    hash), then Redis came back from data holding version 1 alone before the start's first write. Its marker follows
    3: written, the subscriber at 3 went on across it keeping B and C, which the desk's memory showed too (C4)."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        image = await saved(client)
        await store.write([("web", 1000, [_update("B", 5, 2), _update("C", 5, 3)])])
        feed = RunFeed("web", FeedPolicy(throttle_ms=0), 0, *await store.load("web"))
        assert set(feed.published) == {("A", "DC"), ("B", "DC"), ("C", "DC")}
        await restored(client, image, at_once=True)
        feed.offer(("A", "DC"), 0, T, 0, 0)
        taken = feed.take(0, 10)
        assert [(u.version, u.follows) for u in taken] == [(4, 3), (5, None)]
        with pytest.raises(StreamLost, match=r"^LOST .*version 4 follows 3, and the stream ends at 1, below 3"):
            await store.write([("web", 1000, taken)])
        assert await _versions(client, store) == [1], "nothing of it written"
    finally:
        await store.aclose()


async def test_a_marker_linked_to_the_newest_version_handed_out_is_written_though_its_entry_was_deleted(
        redis_url: str) -> None:
    """An operator deleted version 3's entry (``XDEL``): Redis still hands out ids above 3, and a start links to 3
    (``load``): written, not refused at every start (a restart loop)."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1), _update("B", 5, 2), _update("C", 5, 3)])])
        await client.xdel(store.stream("web"), "3-0")
        assert (await store.load("web"))[1] == 3
        await store.write([("web", 1000, [start_marker("web", 10, 3, T, settled=True), _update("A", 0, 11)])])
        assert await _versions(client, store) == [1, 2, 10, 11]
    finally:
        await store.aclose()


async def test_an_entry_following_on_from_one_deleted_by_hand_is_written_not_refused_as_lost(redis_url: str) -> None:
    """An operator deleted the newest entry (``XDEL`` of version 3): Redis handed its id out, the state hash keeps its
    value, and the next write (4, following on from 3) is no write above a loss. Refused LOST, it stopped the desk and
    restarted the whole service for an operator's edit."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1), _update("B", 5, 2), _update("C", 5, 3)])])
        await client.xdel(store.stream("web"), "3-0")
        await store.write([("web", 1000, [_update("A", 4, 4)])])
        assert await _versions(client, store) == [1, 2, 4]
    finally:
        await store.aclose()


async def test_a_marker_is_written_on_a_stream_made_anew_empty(redis_url: str) -> None:
    """The stream deleted and made again empty by a publisher's consumer group (``MKSTREAM``), the state hash kept:
    the start links to the state hash's newest version, which the empty stream never held — no loss to tell."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1), _update("B", 5, 2)])])
        await client.delete(store.stream("web"))
        await client.xgroup_create(store.stream("web"), "publisher", id="0", mkstream=True)
        assert (await store.load("web"))[1] == 2
        await store.write([("web", 1000, [start_marker("web", 10, 2, T, settled=True)])])
        assert await _versions(client, store) == [10]
    finally:
        await store.aclose()


async def test_a_start_s_marker_linked_past_what_the_stream_holds_is_written_restart_after_restart(
        redis_url: str) -> None:
    """The stream lost its newest entries while the state hash kept their values (or was deleted and written again
    by hand): a start links to the state hash's newest (``load``), beyond what the stream was handed out. Refused, the
    next start would link there again and be refused again: a restart loop. A start's marker is written."""
    client = connect(redis_url, 5.0)
    store = await _store(client)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1), _update("B", 5, 2), _update("C", 5, 3)])])
        kept = await client.xrange(store.stream("web"), max="1-0")
        await client.delete(store.stream("web"))
        await client.xadd(store.stream("web"), kept[0][1], id=kept[0][0])
        _, newest, reached = await store.load("web")
        assert (newest, reached) == (3, 1)
        await store.write([("web", 1000, [start_marker("web", 10, 3, T, reached=reached), _update("A", 0, 11)])])
        assert await _versions(client, store) == [1, 10, 11]
    finally:
        await store.aclose()


def test_a_settle_finds_the_loss_after_an_earlier_write_in_doubt_moved_the_run_s_link_C4() -> None:
    """Published up to 43; a write in doubt (44) settled as not landed, the stream at 43: the next write is a marker
    at 45 following 43. That write in doubt too, its settle reads the stream at 41: Redis lost 42 and 43, which the
    desk's memory (a snapshot) still shows — the service stops to be restarted (R7), as at any other settle."""
    feed = RunFeed("web", FeedPolicy(throttle_ms=0), 0, {}, 40)
    feed.offer(("sku-a", ""), 5, 1, 0, 0)
    feed.confirm(feed.take(0, 10))  # the marker (41) and sku-a (42)
    feed.offer(("sku-b", ""), 5, 1, 0, 0)
    feed.confirm(feed.take(0, 10))  # sku-b (43)
    feed.offer(("sku-a", ""), 4, 2, 0, 0)
    doubt = feed.take(0, 10)
    lost_under([("web", feed, doubt)], {"web": 43})  # nothing lost: the settle goes on
    feed.give_back(doubt, 0)
    feed.lost_past(max(u.version for u in doubt), 43)
    again = feed.take(0, 10)
    assert [(u.version, u.follows) for u in again] == [(45, 43), (46, None)] and again[0].settled
    with pytest.raises(StreamLost, match="ends at version 41, below version 43"):
        lost_under([("web", feed, again)], {"web": 41})
