"""The publisher holding the lease names the keys it delivered at versions Redis has since lost also where the
service's start marker after the loss was trimmed from the stream before it read it (a holder behind by more than
``stream_maxlen`` entries): it cannot know the version the start follows, so it compares, as a standby does, the
versions it delivered with the channel's state hash (C4). Real redis-server, the real publisher holding the lease, a
real local webhook receiver; the test acts as the service's desk."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import script_item, start_marker, to_fields
from atp_service.storage.resp import seq_of, stream_info
from publishers import Publisher, PublisherMetrics, WebhookAdapter
from publishers._compare import SWEEP_KEYS, Comparison
from publishers._restamp import LostNames
from reservation import ChannelUpdate
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.publishers.http_helpers import serve
from tests.publishers.test_publisher import SECRET
from tests.publishers.test_publisher_lease import Destination, config, held
from tests.publishers.test_publisher_standby_names import RESTAMP, recorded
from tests.publishers.test_publisher_trimmed import STREAM, desk_writes, value
from tests.waiting import until

Restart = Callable[[ChannelStore], Awaitable[None]]


async def marker_and_enough_entries_to_trim_it(store: ChannelStore) -> None:
    """The service's next start on the restored data (it held up to version 2) through the desk's own write: its
    marker, then more entries than the stream keeps (``MAXLEN ~ 1``), in one call: trimmed before any read."""
    run = [value(f"n{i % 10}", 1 + i % 7, 101 + i) for i in range(300)]
    await store.write([("web", 1, [start_marker("web", 100, 2, 0), *run])])


async def two_starts_the_first_marker_trimmed(store: ChannelStore) -> None:
    """Two starts before the holder reads: the first's marker (it follows 2) trimmed with the run's entry after it,
    the second's marker (it follows 101, which no version delivered is below) the first entry left."""
    entries = [start_marker("web", 100, 2, 0), value("n0", 1, 101), start_marker("web", 200, 101, 0),
               value("n1", 2, 201)]
    async with store.client.pipeline(transaction=True) as pipe:  # as one desk step trimming as it writes
        for u in entries:
            pipe.xadd(STREAM, dict(to_fields(u)), id=f"{u.version}-0")
            if u.sku:  # a marker carries no value: not in the state hash
                pipe.hset(store.state_key("web"), f"{u.sku}\t", script_item(u)[-1])
        pipe.xtrim(STREAM, maxlen=2, approximate=False)
        await pipe.execute()


def sent(receiver: Destination) -> dict[str, tuple[int, int]]:
    """sku -> (quantity, version) of the newest version the receiver took of it."""
    newest: dict[str, tuple[int, int]] = {}
    with receiver.lock:
        for u in receiver.received:
            if u["version"] > newest.get(u["sku"], (0, 0))[1]:
                newest[u["sku"]] = (u["quantity"], u["version"])
    return newest


def compared(metrics: PublisherMetrics) -> float:
    return metrics.registry.get_sample_value("atp_publisher_restamp_compared_keys_total", {"channel": "web"}) or 0.0


@contextlib.asynccontextmanager
async def holder_that_delivered_b_at_3(store: ChannelStore, receiver: Destination
                                       ) -> AsyncIterator[tuple[Publisher, PublisherMetrics, dict[Any, Any]]]:
    """One publisher, holding the lease, delivers ``a`` = 5 at 1, ``b`` = 3 at 2 (Redis's image taken: the lease
    in it this publisher's), then ``b`` = 9 at 3, the version Redis is to lose. Yields it, its metrics and the image."""
    metrics = PublisherMetrics()
    with serve(receiver.handle) as url:
        publisher = Publisher(config(redis_retry_s=0.05), store.client, WebhookAdapter(url, SECRET), metrics)
        task = asyncio.create_task(publisher.run())
        try:
            await until(lambda: held(metrics) == 1.0, "the publisher holds the lease")
            await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
            await until(lambda: recorded(store, "b", 2), "b at 2 delivered and recorded")
            image = await saved(store.client)
            await desk_writes(store, [value("b", 9, 3)])
            await until(lambda: recorded(store, "b", 3), "b at 3 delivered and recorded")
            yield publisher, metrics, image
            assert held(metrics) == 1.0, "named as the holder"
            assert not task.done(), task
        finally:
            publisher.stop()
            await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("restart", [marker_and_enough_entries_to_trim_it, two_starts_the_first_marker_trimmed])
async def test_a_holder_whose_read_the_trimming_outran_past_the_start_marker_compares_with_the_state_hash_C4(
        store: ChannelStore, caplog: pytest.LogCaptureFixture, restart: Restart) -> None:
    """Defect: the holder named only from a start's marker it read. Redis lost version 3 (``b`` = 9, delivered),
    and the service's next start wrote its marker (it follows 2) and more entries than the stream keeps before the
    holder read again: the holder found the entries trimmed unread and delivered their keys' newest values from the
    state hash, where ``b`` is at 2, below the 3 delivered (skipped: never delivered at or below). ``b`` = 9, which
    the service no longer holds, stayed at the destination until ``b`` changed, and no warning said so."""
    caplog.set_level(logging.INFO, logger="publishers")
    receiver = Destination()
    async with holder_that_delivered_b_at_3(store, receiver) as (_, metrics, image):
        await restored(store.client, image, at_once=True)  # the lease in it still the holder's
        await restart(store)
        info = await stream_info(store.client, STREAM)
        assert info is not None and seq_of(info["first-entry"][0]) > 101, "the first start's marker trimmed"
        newest = seq_of(info["last-generated-id"])
        await until(lambda: store.client.hgetall(RESTAMP), "b, delivered at the lost version 3, named")
        assert await store.client.hgetall(RESTAMP) == {b"b\t": b"3"}, "only b: a's version 1 is durable"
        await until(lambda: compared(metrics) >= 2, "the versions delivered of a and b compared (counted)")
        assert [r for r in caplog.records if getattr(r, "event", "") == "publisher_restamp_compare"]
        await until(lambda: max(v for _, v in sent(receiver).values()) == newest, "the holder delivers on")
        await desk_writes(store, [value("b", 3, newest + 1)])  # the desk publishes b again with its durable value
        await until(lambda: sent(receiver).get("b") == (3, newest + 1), "b's durable value at the destination")
    assert sent(receiver)["a"] == (5, 1)
    assert [v for sku, v in receiver.versions() if sku == "b"] == [2, 3, newest + 1], "b delivered at or below"


async def test_a_holder_finding_entries_trimmed_unread_without_a_loss_names_nothing(
        store: ChannelStore, caplog: pytest.LogCaptureFixture) -> None:
    """No loss (the state hash holds every key at the version delivered or above): the comparison finds nothing."""
    receiver = Destination()
    async with holder_that_delivered_b_at_3(store, receiver) as (_, metrics, _image):
        caplog.set_level(logging.WARNING, logger="publishers")
        run: list[ChannelUpdate] = [value(f"n{i % 10}", 1 + i % 7, 4 + i) for i in range(300)]
        await store.write([("web", 1, [value("b", 4, 4), *run[1:]])])  # trimmed before the holder reads
        await until(lambda: compared(metrics) >= 2, "the versions delivered compared")
        await until(lambda: sent(receiver).get("n9") == (1 + 299 % 7, 303), "the holder delivers on")
        assert not await store.client.exists(RESTAMP)
        assert not [r for r in caplog.records if "delivered at versions Redis has since lost" in r.getMessage()]


async def test_a_comparison_started_again_while_under_way_goes_on_over_every_key_a_step_at_a_time(
        store: ChannelStore) -> None:
    """``SWEEP_KEYS`` keys a step; started again (a later gap) it goes on from where it is over every key once more,
    so that a holder finding a gap at each read still compares them all, and no key twice between two starts."""
    n = 2 * SWEEP_KEYS + 500
    delivered = {f"k{i}\t": 10 for i in range(n)}
    lost = {f"k{i}\t" for i in (0, SWEEP_KEYS - 1, SWEEP_KEYS, n - 1)}  # at each edge of a step
    held = {key: script_item(value(key[:-1], 1, 5 if key in lost else 10))[-1] for key in delivered}
    await store.client.hset(store.state_key("web"), mapping=held)  # type: ignore[arg-type]
    metrics = PublisherMetrics()
    cfg = config()
    comparison = Comparison(cfg, store.client, LostNames(cfg, store.client, metrics), metrics, lambda: delivered)
    comparison.start("holder", "a gap")
    await comparison.step()
    assert await store.client.hgetall(RESTAMP) == {b"k0\t": b"10", f"k{SWEEP_KEYS - 1}\t".encode(): b"10"}
    await store.client.delete(RESTAMP)
    comparison.start("holder", "another gap")  # from key SWEEP_KEYS on, over all n once more
    steps = 0
    while comparison.under_way:
        await comparison.step()
        steps += 1
    assert steps == 3 and compared(metrics) == SWEEP_KEYS + n
    assert await store.client.hgetall(RESTAMP) == {key.encode(): b"10" for key in lost}
