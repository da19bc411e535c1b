"""A destination down longer than ``max_attempts``: every update of the outage was dead-lettered,
stock-outs included. Once it answers again each key converges to the channel's durable value (its
state hash), stock-outs first, never an older version after a newer one — also across a restart,
and past ``redeliver_max_keys`` (a full resync). A real Redis and a real local webhook receiver."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.nodes import connect_any
from publishers import JsonlAdapter, Publisher, PublisherMetrics, WebhookAdapter
from tests.publishers.test_publisher import (
    SECRET,
    Receiver,
    config,
    publish,
    receiver_factory,
    run_until,
)
from tests.publishers.test_publisher_trimmed import PublishesOnFirstDelivery, desk_writes, value
from tests.waiting import until

__all__ = ["receiver_factory"]  # a fixture (the store and client are conftest's)
STREAM = "atp:{avail}:web"
DLQ = f"{STREAM}:dlq:webhook"
REMEMBERED = f"{STREAM}:redeliver:webhook"


def last_values(receiver: Receiver) -> dict[str, tuple[int, int]]:
    """sku -> (quantity, version) of the last update per sku the receiver accepted."""
    with receiver.lock:
        return {u["sku"]: (u["quantity"], u["version"]) for u in receiver.accepted}


def versions_only_rise(receiver: Receiver) -> None:
    seen: dict[str, int] = {}
    with receiver.lock:
        for u in receiver.accepted:
            assert u["version"] > seen.get(u["sku"], 0), f"{u['sku']}: version {u['version']} after a newer one"
            seen[u["sku"]] = u["version"]


def outcome(metrics: PublisherMetrics, name: str) -> float:
    return metrics.deliveries.labels("web", "webhook", name)._value.get()  # type: ignore[no-any-return]


def publisher(client: aioredis.Redis, url: str, metrics: PublisherMetrics, **overrides: Any) -> Publisher:
    settings = {"max_attempts": 2, "redeliver_interval_s": 3600.0, **overrides}
    return Publisher(config(**settings), client, WebhookAdapter(url, SECRET), metrics)


async def dead_lettered(client: aioredis.Redis, n: int) -> Callable[[], Awaitable[bool]]:
    async def there() -> bool:
        if await client.xlen(DLQ) < n:
            return False  # (the group may not be made yet)
        info: Any = await client.xpending(STREAM, "webhook")
        return int(info["pending"]) == 0
    return there


async def test_after_an_outage_longer_than_max_attempts_every_key_converges_stock_outs_first(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """The bounded timer: no change comes after the recovery, yet the dead-lettered values go out."""
    receiver = Receiver(always_fail=True)
    metrics = PublisherMetrics()
    running = publisher(client, receiver_factory(receiver), metrics, redeliver_interval_s=0.2)
    task = asyncio.create_task(running.run())
    try:
        await desk_writes(store, [value("a", 5, 1), value("b", 0, 2), value("c", 3, 3)])
        await until(await dead_lettered(client, 3), "three values dead-lettered")
        await until(_attempted(receiver, 2 + 2), "four attempts")  # and a pass on the timer failed again
        assert receiver.accepted == []
        receiver.always_fail = False  # the destination is back; nothing changes in the channel
        await until(_converged(receiver, {"a": (5, 1), "b": (0, 2), "c": (3, 3)}), "a, b and c delivered")

        async def settled() -> bool:  # the last answer read and counted: it may follow the receiver's by a turn
            return outcome(metrics, "redelivered") == 3 and await client.hlen(REMEMBERED) == 0
        await until(settled, "the three redeliveries counted and forgotten")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
    assert receiver.accepted[0]["sku"] == "b"  # the stock-out first (C2)
    assert await client.xlen(DLQ) == 3  # a pass that failed again did not dead-letter them twice


async def test_a_key_changed_again_during_the_outage_gets_its_newest_value_never_an_older_one_after(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """The first delivery that succeeds after the outage brings the redelivery at once."""
    receiver = Receiver(always_fail=True)
    url = receiver_factory(receiver)
    metrics = PublisherMetrics()
    running = publisher(client, url, metrics)
    task = asyncio.create_task(running.run())
    try:
        await desk_writes(store, [value("a", 5, 1), value("b", 4, 2)])
        await until(await dead_lettered(client, 2), "two values dead-lettered")
        await desk_writes(store, [value("a", 0, 3)])  # "a" sells out during the outage: dead-lettered too
        await until(await dead_lettered(client, 3), "three values dead-lettered")
        receiver.always_fail = False
        await desk_writes(store, [value("d", 9, 4)])  # an unrelated change: the destination answers

        async def converged() -> bool:
            return last_values(receiver) == {"a": (0, 3), "b": (4, 2), "d": (9, 4)}

        await until(converged, "the newest value of each key delivered")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
    versions_only_rise(receiver)
    assert all((u["sku"], u["version"]) != ("a", 1) for u in receiver.accepted)


async def test_a_publisher_restarted_during_the_outage_still_converges(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    receiver = Receiver(always_fail=True)
    url = receiver_factory(receiver)
    await desk_writes(store, [value("a", 0, 1), value("b", 6, 2)])
    await run_until(publisher(client, url, PublisherMetrics()), await dead_lettered(client, 2))
    await desk_writes(store, [value("b", 2, 3)])  # "b" moves while the publisher is down
    receiver.always_fail = False

    async def converged() -> bool:
        return last_values(receiver) == {"a": (0, 1), "b": (2, 3)} and await client.hlen(REMEMBERED) == 0

    await run_until(publisher(client, url, PublisherMetrics()), converged)
    versions_only_rise(receiver)


async def test_past_redeliver_max_keys_the_whole_state_hash_is_resynced(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    receiver = Receiver(always_fail=True)
    url = receiver_factory(receiver)
    metrics = PublisherMetrics()
    await desk_writes(store, [value(f"s{n}", n, n + 1) for n in range(5)])  # "s0" sells out
    await run_until(publisher(client, url, metrics, redeliver_max_keys=2), await dead_lettered(client, 5))
    receiver.always_fail = False

    async def converged() -> bool:  # the destination has it all, and the publisher knows it (the mark cleared)
        return (last_values(receiver) == {f"s{n}": (n, n + 1) for n in range(5)}
                and not await client.exists(f"{STREAM}:redeliver-all:webhook"))

    await run_until(publisher(client, url, metrics, redeliver_max_keys=2), converged)
    assert receiver.accepted[0]["sku"] == "s0"
    assert metrics.redeliver_overflows.labels("web")._value.get() >= 1
    assert outcome(metrics, "resynced") == 5


class _AnswersWhenLetGo:
    """As ``Receiver``, but a request it takes, past the first ``at_once``, is answered only once
    ``answer`` is set (bounded)."""

    def __init__(self, receiver: Receiver, at_once: int = 0) -> None:
        self.receiver, self.answer, self.at_once = receiver, threading.Event(), at_once
        self.lock, self.accepted = receiver.lock, receiver.accepted

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        code = self.receiver.handle(body, headers)
        if code == 200:
            self.at_once -= 1
            if self.at_once < 0:
                self.answer.wait(10)
        return code


async def test_a_resync_stopped_after_the_destination_took_it_counts_what_it_sent_and_stays_owed(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """A resync was counted only once every page was delivered and recorded: one stopped while the
    destination answered (or half-way through a large state hash) counted none of what it had taken
    and sent. Now each page counts as it is taken from the state hash; the resync stays owed."""
    receiver = Receiver(always_fail=True)
    holding = _AnswersWhenLetGo(receiver, at_once=1)  # the stock-out "s0", sent first and alone
    url, metrics = receiver_factory(holding), PublisherMetrics()
    await desk_writes(store, [value(f"s{n}", n, n + 1) for n in range(5)])
    await run_until(publisher(client, url, metrics, redeliver_max_keys=2), await dead_lettered(client, 5))
    receiver.always_fail = False
    running = publisher(client, url, metrics, redeliver_max_keys=2)
    task = asyncio.create_task(running.run())

    async def taken() -> bool:  # then the first chunk (delivery_batch 3) of the other values; its answer is held
        return len(last_values(receiver)) == 4

    try:
        await until(taken, "the page's first chunk taken")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
        holding.answer.set()
    assert outcome(metrics, "resynced") == 5
    assert await client.exists(f"{STREAM}:redeliver-all:webhook"), "the resync is owed again at the next start"


async def test_a_refused_value_is_not_resent_while_running_but_its_newest_value_is_at_the_next_start(
        store: ChannelStore, client: aioredis.Redis, receiver_factory: Any) -> None:
    """A 4xx says this payload will not be taken: resending it at each success would only be refused
    again. An operator's fix (credentials, URL, the store's mapping) comes with a restart: then."""
    receiver = Receiver(always_fail=True)
    url = receiver_factory(_Refuses(receiver))
    metrics = PublisherMetrics()
    running = publisher(client, url, metrics)
    task = asyncio.create_task(running.run())
    try:
        await desk_writes(store, [value("a", 0, 1)])
        await until(await dead_lettered(client, 1), "the refused value dead-lettered")
        assert outcome(metrics, "failed") == 1
        receiver.always_fail = False
        # A success brings a pass of the retryable ones before the next read: once "e" is in, the
        # pass after "d" has run, and it left "a" alone.
        await desk_writes(store, [value("d", 9, 2)])
        await until(_converged(receiver, {"d": (9, 2)}), "d delivered")
        await desk_writes(store, [value("e", 8, 3)])
        await until(_converged(receiver, {"d": (9, 2), "e": (8, 3)}), "d and e delivered")
    finally:
        running.stop()
        await asyncio.wait_for(task, 5)
    there = _converged(receiver, {"a": (0, 1), "d": (9, 2), "e": (8, 3)})

    async def delivered_and_forgotten() -> bool:  # the receiver takes "a" before the publisher hears so
        return await there() and await client.hlen(REMEMBERED) == 0

    await run_until(publisher(client, url, metrics), delivered_and_forgotten)


class _Refuses:
    """As ``Receiver``, but a failure is a 422 (not worth retrying), not a 503."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.lock, self.accepted = receiver.lock, receiver.accepted

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        code = self.receiver.handle(body, headers)
        return 422 if code == 503 else code


def _converged(receiver: Receiver, expected: dict[str, tuple[int, int]]) -> Callable[[], Awaitable[bool]]:
    async def there() -> bool:
        return last_values(receiver) == expected
    return there


def _attempted(receiver: Receiver, n: int) -> Callable[[], Awaitable[bool]]:
    async def there() -> bool:
        with receiver.lock:
            return receiver.attempts >= n
    return there


async def test_redelivery_and_its_full_resync_run_on_a_redis_cluster(cluster_url: str, tmp_path: Path) -> None:
    """Every key a redelivery touches (remembered keys, the resync mark, the state hash) shares the
    channel feeds' hash tag: its MULTI and its compare-and-delete script run on one node. The
    destination is a jsonl file whose folder is missing (retryable), then made."""
    cluster = connect_any(cluster_url, 5.0, cluster=True)
    out = tmp_path / "later" / "feed.jsonl"
    try:
        updates = [value("a", 0, 1), value("b", 4, 2), value("c", 2, 3)]
        await publish(cluster, updates)
        await cluster.hset("atp:{avail}:web:state", mapping={  # as the desk writes it with the entries
            f"{u.sku}\t": f"{u.quantity} {u.version} {u.event_time} {u.status.value}" for u in updates})
        down = Publisher(config(group="jsonl", max_attempts=2, redeliver_max_keys=1), cluster, JsonlAdapter(out),
                         PublisherMetrics())
        await run_until(down, lambda: _all_dead_lettered(cluster, 3))
        assert await cluster.exists("atp:{avail}:web:redeliver-all:jsonl")
        out.parent.mkdir()
        up = Publisher(config(group="jsonl", redeliver_max_keys=1), cluster, JsonlAdapter(out), PublisherMetrics())

        async def converged() -> bool:  # the file written, then the resync's mark given back (a turn later)
            return (out.exists() and len(out.read_text().splitlines()) == 3
                    and not await cluster.exists("atp:{avail}:web:redeliver-all:jsonl"))

        await run_until(up, converged)
        assert json.loads(out.read_text().splitlines()[0])["sku"] == "a"  # the stock-out first
        assert not await cluster.exists("atp:{avail}:web:redeliver-all:jsonl")
    finally:
        await cluster.aclose()


async def _all_dead_lettered(client: Any, n: int) -> bool:
    return bool(await client.xlen("atp:{avail}:web:dlq:jsonl") >= n)


async def test_a_stock_out_published_during_a_full_resync_does_not_wait_for_its_end(
        store: ChannelStore, tmp_path: Path) -> None:
    """Past redeliver_max_keys the whole state hash is resynced: it ran to its end before the stream
    was read again, so a stock-out published meanwhile waited behind every key's value and their
    tokens (100,000 keys at 10/s: hours). As the remembered keys' redelivery, it goes a step (one
    HSCAN call) at a time with a read of the stream between steps (C2)."""
    keys = 600  # past hash-max-listpack-entries (512): a table, whose HSCAN COUNT (read_count) bounds a step
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(keys)])
    out = tmp_path / "later" / "feed.jsonl"  # missing folder: every delivery fails, retryable
    down = Publisher(config(group="jsonl", max_attempts=1, redeliver_max_keys=1, delivery_batch=100), store.client,
                     JsonlAdapter(out), PublisherMetrics())

    async def dead() -> bool:
        if await store.client.xlen(f"{STREAM}:dlq:jsonl") < keys:
            return False  # (the group may not be made yet)
        info: Any = await store.client.xpending(STREAM, "jsonl")
        return int(info["pending"]) == 0

    await run_until(down, dead)
    assert await store.client.exists(f"{STREAM}:redeliver-all:jsonl")
    out.parent.mkdir()
    adapter = PublishesOnFirstDelivery(out, store, value("z", 0, keys + 1))
    up = Publisher(config(group="jsonl", read_count=50, redeliver_max_keys=1, block_ms=1), store.client, adapter,
                   PublisherMetrics())

    async def converged() -> bool:
        return (out.exists() and len(out.read_text().splitlines()) == keys + 1
                and not await store.client.exists(f"{STREAM}:redeliver-all:jsonl"))

    await run_until(up, converged, timeout_s=30)
    skus = [json.loads(line)["sku"] for line in out.read_text().splitlines()]
    assert skus.index("z") < keys, f"the stock-out went out after the whole resync, at {skus.index('z')}"
