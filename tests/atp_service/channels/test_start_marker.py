"""A run's feed writes its start marker first (``RunFeed``): at the run's first version, following the newest
version Redis held at the start, with the first write whatever else is due — on a channel with nothing to publish
too, so that publishers name what they delivered at versions Redis lost even where no key changes (C4). A write
that did not land gives the marker back with its version (C3: contiguous); once written, none again. And on a real
Redis: the marker takes its version in the stream and nothing in the state hash."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from atp_service.channels.feeds import RunFeed
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import MARKER_FIELDS, StartMarker, values_of
from atp_service.storage.keys import CHANNELS, Keyspace
from reservation import FeedPolicy, Published, StockStatus

NOW = 0  # the clock's floor below Redis's newest: the run's first version is the one after it


def quiet_feed() -> RunFeed:
    """A channel that published sku-a = 3 at version 41 (the newest Redis holds), nothing pending: first 42."""
    published = {("sku-a", ""): Published(3, 41, 1, StockStatus.LOW_STOCK)}
    return RunFeed("web", FeedPolicy(throttle_ms=0), NOW, published, 41)


def test_a_quiet_channel_s_first_write_is_its_start_marker_alone() -> None:
    feed = quiet_feed()
    assert feed.next_wakeup(NOW) == NOW and feed.pending == 0, "due, though no value waits"
    (marker,) = feed.take(NOW, 10)
    assert isinstance(marker, StartMarker) and (marker.version, marker.follows) == (42, 41) == (feed.first, 41)
    assert feed.in_flight == 1 and feed.take(NOW, 10) == [], "one marker, while it is written"
    feed.confirm([marker])
    assert feed.published_version == 42 and feed.in_flight == 0, "the snapshot is current as of the marker"
    assert feed.published == {("sku-a", ""): Published(3, 41, 1, StockStatus.LOW_STOCK)}, "no key's value"
    assert feed.next_wakeup(NOW) is None and feed.take(NOW, 10) == [], "written once"


def test_the_run_s_updates_follow_on_from_its_marker_and_one_given_back_takes_its_version_again_C3() -> None:
    feed = quiet_feed()
    feed.offer(("sku-a", ""), 0, 2, NOW, NOW)  # a stock-out
    taken = feed.take(NOW, 10)
    assert [(type(u).__name__, u.version, u.follows) for u in taken] == [("StartMarker", 42, 41),
                                                                        ("ChannelUpdate", 43, None)]
    feed.give_back(taken, NOW)  # the write did not land
    assert feed.in_flight == 0 and feed.version == 41
    again = feed.take(NOW, 10)
    assert [(u.version, u.follows) for u in again] == [(42, 41), (43, None)] and values_of(again)[0].quantity == 0
    feed.confirm(again)
    assert feed.published_version == 43
    assert feed.published[("sku-a", "")] == Published(0, 43, 2, StockStatus.OUT_OF_STOCK)


def test_no_marker_once_a_settle_found_the_stream_past_the_run_s_first_version() -> None:
    """Versions at and above ``first`` in the stream that this desk did not write (a settle raised the counter
    past them): no version is left for the marker, and none is written at another (it would follow nothing)."""
    feed = quiet_feed()
    feed.offer(("sku-a", ""), 0, 2, NOW, NOW)
    feed.give_back(feed.take(NOW, 10), NOW)
    feed.version = 50  # as ``ChannelDesk._settle`` does with what it read
    assert [(type(u).__name__, u.version) for u in feed.take(NOW, 10)] == [("ChannelUpdate", 51)]
    assert not feed.marking


async def test_the_marker_takes_its_version_in_the_stream_and_nothing_in_the_state_hash(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.set(Keyspace("atp:").owner(CHANNELS), 1)
    store = ChannelStore(client, "atp:", epoch=lambda: 1)
    try:
        feed = RunFeed("web", FeedPolicy(), NOW, *await store.load("web"))
        feed.offer(("sku-a", ""), 7, 2, NOW, NOW)  # a baseline
        taken = feed.take(NOW, 10)
        await store.write([("web", 1000, taken)])
        feed.confirm(taken)
        entries: Any = await client.xrange(store.stream("web"))
        assert [entry_id for entry_id, _ in entries] == [f"{feed.first}-0".encode(), f"{feed.first + 1}-0".encode()]
        assert tuple(entries[0][1]) == tuple(f.encode() for f in MARKER_FIELDS) and entries[0][1][b"follows"] == b"0"
        assert await client.hkeys(store.state_key("web")) == [b"sku-a\t"]
        assert (await store.load("web"))[1] == feed.first + 1
        restarted = RunFeed("web", FeedPolicy(), NOW, *await store.load("web"))  # a plain restart: no loss
        (marker,) = restarted.take(NOW, 10)
        assert marker.follows == feed.first + 1 and marker.version == restarted.first > feed.first + 1
    finally:
        await store.aclose()  # its write connections and the client


def test_a_relinked_feed_s_versions_begin_above_every_version_the_feed_it_replaces_handed_out_C3() -> None:
    """A relink (``ChannelDesk._relink``) reads the channel again: Redis holds 41, the replaced feed had handed out up
    to 60 (lost, or taken by a write refused). Its marker takes 61 and follows 41: no version names two values."""
    feed = quiet_feed()
    feed.begin_above(60)
    (marker,) = feed.take(NOW, 10)
    assert (marker.version, marker.follows) == (61, 41) == (feed.first, feed.resumed_from)
    below = quiet_feed()
    below.begin_above(30)  # under the run's own first version: nothing moves
    assert below.first == 42
