"""A publisher standing by (another publisher of its group holds the lease) names the keys it delivered at versions
Redis has since lost, as the holder does (C4): naming only raises values in the channel's ``restamp`` hash, so it needs
no lease. Redis restored from data older than the lease lets the other publisher take the lease at once, and that one
never delivered those versions: it has nothing to name. Real redis-server, two real publishers of one group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import script_item, start_marker, to_fields
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from tests.atp_service.app.test_redis_lost_tail import Image, restored, saved
from tests.publishers.test_publisher_lease import DELIVERED, KEY, config, held
from tests.publishers.test_publisher_redis_lost_lease import lower_after_higher
from tests.publishers.test_publisher_trimmed import STREAM, delivered, desk_writes, value
from tests.waiting import until

RESTAMP = f"{STREAM}:restamp"
LOOK_S = 0.05


def publisher(store: ChannelStore, out: Path, metrics: PublisherMetrics) -> Publisher:
    """A publisher of ``web`` (group ``webhook``, a 5 s lease) to ``out``, looking often while it stands by."""
    return Publisher(config(standby_look_s=LOOK_S, redis_retry_s=LOOK_S), store.client, JsonlAdapter(out), metrics)


async def recorded(store: ChannelStore, sku: str, version: int) -> bool:
    """``sku``'s ``version`` delivered, recorded and its entry acknowledged."""
    if await store.client.hget(DELIVERED, f"{sku}\t") != str(version).encode():
        return False  # the group may not be made yet
    info: Any = await store.client.xpending(STREAM, "webhook")
    return int(info["pending"]) == 0


def stood_by(caplog: pytest.LogCaptureFixture, holder: str) -> bool:
    """A publisher said it stands by while ``holder`` (a lease's token) delivers: done with what it read as the holder
    (a read under way when it lost the lease still names what it read, as the holder does)."""
    return any(getattr(r, "event", "") == "publisher_standby" and getattr(r, "holder", "") == holder
               for r in caplog.records)


async def lease_of(store: ChannelStore, image: Image, token: str) -> None:
    """``image`` with the group's lease held by ``token``: restored, it is that publisher's at once."""
    scratch = f"{STREAM}:scratch"
    await store.client.set(scratch, token)
    image[KEY.encode()] = (await store.client.dump(scratch), 5000)
    await store.client.delete(scratch)


@contextlib.asynccontextmanager
async def delivered_by_a_then_lost_under_b(store: ChannelStore, out: Path, caplog: pytest.LogCaptureFixture
                                           ) -> AsyncIterator[PublisherMetrics]:
    """Publisher A holds the lease and delivers ``a`` = 5 at 1, ``b`` = 3 at 2, then ``b`` = 9 at 3; B stands by.
    Redis is then restored from data older than the lease (taken at version 2, the lease lapsed since): B takes it at
    once (the test gives it to B in the same step, so that A cannot take it back first), and A stands by once its
    renewal finds it gone. Redis lost version 3: A delivered it, B never did. Yields A's metrics, both running."""
    caplog.set_level(logging.INFO, logger="publishers")
    metrics = PublisherMetrics(), PublisherMetrics()
    first, second = publisher(store, out, metrics[0]), publisher(store, out, metrics[1])
    tasks = [asyncio.create_task(first.run())]
    try:
        await until(lambda: held(metrics[0]) == 1.0, "A holds the lease")
        tasks.append(asyncio.create_task(second.run()))
        await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
        await until(lambda: recorded(store, "b", 2), "b at 2 delivered and recorded")
        image = await saved(store.client)
        token = second._holding.lease.token
        await lease_of(store, image, token)
        await desk_writes(store, [value("b", 9, 3)])  # the version Redis loses
        await until(lambda: recorded(store, "b", 3), "b at 3 delivered and recorded")
        await restored(store.client, image, at_once=True)
        await until(lambda: held(metrics[1]) == 1.0 and stood_by(caplog, token), "B holds the lease, A stands by")
        yield metrics[0]
        assert held(metrics[0]) == 0.0 and held(metrics[1]) == 1.0, "A named as a standby"
        assert lower_after_higher(out) == [], "a version delivered below one delivered before (C3)"
        assert not any(t.done() for t in tasks), tasks
    finally:
        first.stop()
        second.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_a_standby_names_what_it_delivered_at_versions_redis_lost_when_another_took_the_lease_C4(
        store: ChannelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: only the holder named, from its own memory, at a start's marker it read. Redis restored from before
    the lease let B take it at once: B read the service's next start marker (it follows 2) and named nothing, never
    having delivered ``b`` at 3; A, which had, stood by and never named it. The destination kept ``b`` = 9, which the
    service no longer holds, for good, and no warning said so."""
    out = tmp_path / "feed.jsonl"
    async with delivered_by_a_then_lost_under_b(store, out, caplog):
        await store.write([("web", 100_000, [start_marker("web", 100, 2, 0)])])  # the service's next start
        await until(lambda: store.client.hgetall(RESTAMP), "b, delivered at the lost version 3, named")
        assert await store.client.hgetall(RESTAMP) == {b"b\t": b"3"}
    assert delivered(out)["b"] == (9, 3, "IN_STOCK")


async def test_a_standby_whose_look_the_stream_s_trimming_outran_compares_with_the_state_hash_C4(
        store: ChannelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The start's marker trimmed from the stream before the standby looked at it (the channel wrote more than
    ``stream_maxlen`` entries since its last look): it cannot know the version the start follows, so it compares the
    versions it delivered with the channel's state hash, which the desk writes with every entry and never lowers: a
    key held there below the version delivered (or not at all) was delivered at a version Redis lost."""
    out = tmp_path / "feed.jsonl"
    async with delivered_by_a_then_lost_under_b(store, out, caplog):
        marker, new = start_marker("web", 100, 2, 0), value("c", 1, 101)
        async with store.client.pipeline(transaction=True) as pipe:  # the service's next start, then trimmed at once
            pipe.xadd(STREAM, dict(to_fields(marker)), id="100-0")
            pipe.xadd(STREAM, dict(to_fields(new)), id="101-0")
            pipe.hset(store.state_key("web"), "c\t", script_item(new)[-1])
            pipe.xtrim(STREAM, maxlen=1, approximate=False)
            await pipe.execute()
        await until(lambda: store.client.hgetall(RESTAMP), "b, delivered at the lost version 3, named")
        assert await store.client.hgetall(RESTAMP) == {b"b\t": b"3"}
        assert any("with the channel's state hash instead" in r.getMessage() for r in caplog.records)
        await until(lambda: delivered(out).get("c") == (1, 101, "IN_STOCK"), "B delivers on")


async def test_names_a_restamp_key_of_another_type_refused_are_written_by_a_publisher_that_lost_the_lease_since_C4(
        store: ChannelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the names a refusal left owed were tried again at the holder's reads only. The publisher lost its lease
    meanwhile (another took it): once the operator deleted the key, it stood by with them in memory for good, its
    ``atp_publisher_restamp_owed_keys`` (and ATPPublisherRestampRefused) on, and ``b`` kept its lost value."""
    caplog.set_level(logging.INFO, logger="publishers")
    out, metrics = tmp_path / "feed.jsonl", PublisherMetrics()
    only = publisher(store, out, metrics)
    task = asyncio.create_task(only.run())
    try:
        await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
        await until(lambda: recorded(store, "b", 2), "b at 2 delivered and recorded")
        await store.client.set(RESTAMP, "not a hash")  # the operator's mistake
        await store.write([("web", 100_000, [start_marker("web", 100, 1, 0)])])  # a start: Redis held up to 1
        await until(lambda: owed(metrics) == 1.0, "b, delivered at the lost version 2, owed a naming")
        await store.client.set(KEY, "elsewhere/1/0", px=60_000)  # another publisher holds the lease now
        await until(lambda: stood_by(caplog, "elsewhere/1/0"), "the lease lost: a standby")
        await store.client.delete(RESTAMP)  # the runbook's fix
        await until(lambda: owed(metrics) == 0.0, "the names written by the standby")
        assert await store.client.hgetall(RESTAMP) == {b"b\t": b"2"}
        assert held(metrics) == 0.0
    finally:
        only.stop()
        await asyncio.wait_for(task, 10)


def owed(metrics: PublisherMetrics) -> float | None:
    return metrics.registry.get_sample_value("atp_publisher_restamp_owed_keys", {"channel": "web"})
