"""A channel write in doubt is fenced before it is settled (R7, C4): a late landing is refused.

The desk's write script carries the desk's fence token; settling a failed write first raises the
token in Redis (``ChannelStore.fence``), so a write still on its way — its reply timed out, its
bytes delayed — is refused when it arrives instead of landing after the desk read the stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis, ManualClock
from atp_service.channels.desk import ChannelDesk
from atp_service.channels.feeds import RunFeed
from atp_service.storage.channel_script import WRITE
from atp_service.storage.channel_store import _FENCE, ChannelStore, WriteRefused
from atp_service.storage.channel_wire import values_of
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log import connect
from atp_service.storage.resp import seq_of
from reservation import ChannelUpdate, StockStatus
from tests.atp_service.channel_helpers import fact, latest, stream_entries, stream_updates, write_estate
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import test_config as make_config
from tests.waiting import answered, until

T = 1_700_000_000_000


def _update(sku: str, quantity: int, version: int) -> ChannelUpdate:
    return ChannelUpdate("web", sku, "DC", quantity, None, StockStatus.IN_STOCK, version, T, T)


async def test_a_write_sent_before_the_fence_is_refused_whole_and_changes_nothing(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    await client.set(Keyspace("t:").owner(CHANNELS), 1)
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    late = ChannelStore(client, "t:", epoch=lambda: 1)  # the same desk's write, sent before its fence
    try:
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        await late.write([("web", 1000, [_update("B", 5, 2)])])  # reads the token: same as the desk's
        await store.fence()
        with pytest.raises(WriteRefused, match=r"^STALE"):
            await late.write([("web", 1000, [_update("C", 5, 3)]), ("pickup", 1000, [_update("C", 5, 1)])])
        assert [seq_of(i) for i, _ in await client.xrange(store.stream("web"))] == [1, 2]
        assert not await client.exists(store.stream("pickup"), store.state_key("pickup"))
        assert set(await client.hkeys(store.state_key("web"))) == {b"A\tDC", b"B\tDC"}
        await store.write([("web", 1000, [_update("C", 5, 3)])])  # the fencing desk writes on
        assert await store.last_version("web") == 3
    finally:
        await late.aclose()  # its write connections (and the shared client)
        await store.aclose()


async def test_a_version_already_in_a_stream_refuses_every_channel_of_the_write(redis_url: str) -> None:
    """Every check comes before the first change, so a refusal is never part of a landing."""
    client = connect(redis_url, 5.0)
    await client.set(Keyspace("t:").owner(CHANNELS), 1)
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        with pytest.raises(WriteRefused, match=r"^TAKEN"):
            await store.write([("pickup", 1000, [_update("A", 5, 1)]), ("web", 1000, [_update("A", 4, 1)])])
        assert not await client.exists(store.stream("pickup"), store.state_key("pickup"))
        assert [u.quantity for u in await store.read_after("web", 0, 10, None)] == [5]
    finally:
        await store.aclose()


async def test_a_replaced_instance_fences_without_raising_and_still_writes_nothing(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    await client.set(Keyspace("t:").owner(CHANNELS), 2)  # a newer instance claimed the keyspace
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    try:
        await store.fence()  # the epoch check already refuses whatever this instance sent
        with pytest.raises(RedisError, match=r"^FENCED"):
            await store.write([("web", 1000, [_update("A", 5, 1)])])
        assert await store.last_version("web") == 0
    finally:
        await store.aclose()


WRITE_SHA = hashlib.sha1(WRITE.encode()).hexdigest().encode()  # the desk's write on the wire (EVALSHA)
FENCE_SHA = hashlib.sha1(_FENCE.encode()).hexdigest().encode()


@contextlib.asynccontextmanager
async def _service_behind(proxy: HoldingProxy, tmp_path: Path) -> AsyncIterator[tuple[ChannelDesk, AtpClient]]:
    """A service with channel feeds talking to Redis through ``proxy`` (0.5 s Redis timeout), with
    pickup showing 4 at store-1 and store-2 of sku-a, the desk idle."""
    url = await proxy.start()
    service = AtpService(make_config(estate=write_estate(tmp_path), redis_timeout_s=0.5), url, clock=ManualClock())
    client: AtpClient | None = None
    try:
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}")
        desk = service.channels
        assert desk is not None
        counts = [fact("c1", "COUNT", "sku-a", "store-1", 5, T), fact("c2", "COUNT", "sku-a", "store-2", 5, T)]
        await answered(lambda: client.record_events(counts))  # type: ignore[union-attr]
        await until(lambda: _idle(desk) and len(desk.feeds["pickup"].published) == 2, "baselines published")
        yield desk, client
    finally:
        if client is not None:
            await client.close()
        await service.stop(grace_s=0.1)
        await proxy.close()


async def test_a_channel_write_landing_after_its_timeout_is_fenced_and_the_feed_converges(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """The desk's write of a stock-out (store-1 -> 0) is held on its way to Redis; it times out and
    the desk settles it, then retries — by then with a second stock-out (store-2 -> 0) in the same
    write. The first write then arrives at Redis, late. Before fencing, it landed after the settle
    had read "not landed": the retry, refused for its reused version, was then taken as landed, so
    the desk believed store-2's 0 published (E11: never sent again) while the stream still showed 4.
    Now the late write is refused (STALE) and the stream converges to what the desk believes."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    async with _service_behind(proxy, tmp_path) as (desk, client):
        proxy.hold(WRITE_SHA)  # the desk's writes, nothing else
        # pickup store-1 -> 0
        await answered(lambda: client.record_events([fact("s1", "SALE", "sku-a", "store-1", 5, T + 1)]))
        await until(lambda: len(proxy.held) >= 2, "two writes held (the first timed out and was settled)")
        # pickup store-2 -> 0
        await answered(lambda: client.record_events([fact("s2", "SALE", "sku-a", "store-2", 5, T + 2)]))
        await until(lambda: any(b"store-2" in h.data for h in proxy.held), "a write with store-2 held")

        reply = await proxy.land(proxy.held[0])  # the first write (store-1 -> 0 only) arrives, late
        proxy.hold()
        proxy.drop()  # the retries never arrive

        await until(lambda: _idle(desk) and desk.feeds["pickup"].published[("sku-a", "store-2")].quantity == 0,
                    "the desk idle with both stock-outs published")
        await _assert_streams_hold_what_the_desk_believes(redis_url, desk)
        shown = latest(await stream_updates(redis_url, "pickup"))
        assert shown[("sku-a", "store-1")][0] == 0 and shown[("sku-a", "store-2")][0] == 0  # C2, C4
        assert reply.startswith(b"-STALE"), reply  # fenced by the settle: it could not land


async def test_a_write_landing_before_the_delayed_fence_counts_as_published_once(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The settle's fence is held too (Redis unreachable for it): the settle retries it, and the
    write still on its way lands meanwhile — before any fence, so it is a landing, and the settle
    confirms it once the fence goes through. Fences landing late as well only cost a refused write."""
    caplog.set_level(logging.WARNING, logger="atp_service.storage.channel_store")
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    async with _service_behind(proxy, tmp_path) as (desk, client):
        settled = _settles(desk, "landed")
        direct = aioredis.Redis.from_url(redis_url)
        await direct.script_load(_FENCE)  # so a late fence is a real one, not NOSCRIPT
        await direct.aclose()
        proxy.hold(WRITE_SHA, FENCE_SHA)
        # pickup store-1 -> 0
        await answered(lambda: client.record_events([fact("s1", "SALE", "sku-a", "store-1", 5, T + 1)]))
        await until(lambda: sum(h.marker == FENCE_SHA for h in proxy.held) >= 2, "the settle's fence retried")
        assert [h.marker for h in proxy.held[:2]] == [WRITE_SHA, FENCE_SHA]
        waiting = [r for r in caplog.records if getattr(r, "event", None) == "channel_settle_waiting"]
        assert len(waiting) == 1 and getattr(waiting[0], "channels", None) == ["pickup"]  # then every 30 s

        reply = await proxy.land(proxy.held[0])  # the write arrives before any fence: it lands
        for held in list(proxy.held):
            assert (await proxy.land(held)).startswith(b":")  # the fences too, late: each raises the token
        proxy.hold()
        await until(lambda: _idle(desk) and desk.feeds["pickup"].published[("sku-a", "store-1")].quantity == 0,
                    "the desk idle with the stock-out published")
        assert reply == b":1\r\n", reply
        assert _settles(desk, "landed") == settled + 1
        await _assert_streams_hold_what_the_desk_believes(redis_url, desk)

        # after the late fences
        await answered(lambda: client.record_events([fact("s2", "SALE", "sku-a", "store-2", 5, T + 2)]))
        await until(lambda: _idle(desk) and desk.feeds["pickup"].published[("sku-a", "store-2")].quantity == 0,
                    "the desk idle with the second stock-out published")
        await _assert_streams_hold_what_the_desk_believes(redis_url, desk)
        shown = latest(await stream_updates(redis_url, "pickup"))
        assert shown[("sku-a", "store-1")][0] == 0 and shown[("sku-a", "store-2")][0] == 0


def _settles(desk: ChannelDesk, outcome: str) -> float:
    (family,) = desk.metrics.settles.collect()
    return sum(s.value for s in family.samples if s.name.endswith("_total") and s.labels["outcome"] == outcome)


def _idle(desk: ChannelDesk) -> bool:
    return not desk._dirty and all(feed.pending == 0 and feed.in_flight == 0 for feed in desk.feeds.values())


async def _assert_streams_hold_what_the_desk_believes(redis_url: str, desk: ChannelDesk) -> None:
    """Per channel: each published value (quantity and version) is the newest entry of its key in
    the stream and the state hash's value, and no version is newer than the desk's (none reused)."""
    reader = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for name, feed in desk.feeds.items():
            entries = await stream_entries(redis_url, name)  # the start's marker too: it takes a version
            believed = {key: (p.quantity, p.version) for key, p in feed.published.items()}
            assert latest(values_of(entries)) == believed, name
            newest = max((u.version for u in entries), default=0)
            assert newest == feed.published_version, name
            # None reused; a channel not written yet is at the start's first version less one (C3: its clock floor).
            assert feed.version == max(newest, feed.first - 1 if isinstance(feed, RunFeed) else 0), name
            state = await reader.hgetall(f"atp:{{avail}}:{name}:state")
            assert {tuple(k.split("\t")): tuple(map(int, v.split()[:2])) for k, v in state.items()} == believed
    finally:
        await reader.aclose()


@pytest.mark.parametrize("wrong", ["state", "stream"])
async def test_a_key_of_another_type_refuses_every_channel_of_the_write_before_any_change(
        redis_url: str, wrong: str) -> None:
    """A channel's state hash (or stream) key holding another type failed the script half-way: the streams
    written before it kept their entries while their state hashes (or the rest) did not — the hash the
    publisher redelivers from behind its stream. Every key's type is checked before the first change."""
    client = connect(redis_url, 5.0)
    await client.set(Keyspace("t:").owner(CHANNELS), 1)
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    try:
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        squatter = store.state_key("pickup") if wrong == "state" else store.stream("pickup")
        await client.set(squatter, "not the service's")
        web_state = await client.hgetall(store.state_key("web"))
        with pytest.raises(WriteRefused, match=r"^KEYTYPE .* holds a string, not a (hash|stream): nothing written"):
            await store.write([("web", 1000, [_update("A", 4, 2)]), ("pickup", 1000, [_update("A", 4, 1)])])
        assert [u.quantity for u in await store.read_after("web", 0, 10, None)] == [5]
        assert await client.hgetall(store.state_key("web")) == web_state  # neither channel changed
        other = store.stream("pickup") if wrong == "state" else store.state_key("pickup")
        assert not await client.exists(other)
        await client.delete(squatter)
        await store.write([("web", 1000, [_update("A", 4, 2)]), ("pickup", 1000, [_update("A", 4, 1)])])
        assert await store.last_version("web") == 2 and await store.last_version("pickup") == 1
        assert set(await client.hkeys(store.state_key("pickup"))) == {b"A\tDC"}
    finally:
        await store.aclose()
