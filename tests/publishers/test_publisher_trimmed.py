"""A publisher behind the channel stream's trimming (``stream_maxlen``): the newest value of a key
whose entries were trimmed before this group read them is delivered from the channel's state hash,
never skipped (a stock-out left unpublished at the destination)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import script_item, to_fields
from publishers import DeliveryError, JsonlAdapter, Publisher, PublisherMetrics
from publishers._state_resync import MAX_RANGES, Owed
from reservation import ChannelUpdate, StockStatus
from tests.publishers.test_publisher import config, run_until
from tests.waiting import until

STREAM = "atp:{avail}:web"


def value(sku: str, quantity: int, version: int, status: StockStatus | None = None) -> ChannelUpdate:
    status = status or (StockStatus.OUT_OF_STOCK if quantity == 0 else StockStatus.IN_STOCK)
    return ChannelUpdate("web", sku, "", quantity, 1, status, version, 1000 + version, 0)


async def desk_writes(store: ChannelStore, updates: list[ChannelUpdate]) -> None:
    """As the desk does: the stream entries and the state hash in one script call."""
    await store.write([("web", 100_000, updates)])


async def stock_out_trimmed_before_the_read(store: ChannelStore) -> None:
    """The stock-out "b" (version 2) and "c" (3) published in one step, as one desk script trimming as it
    writes: "b" trimmed before a read gets "c"."""
    b, c = value("b", 0, 2), value("c", 3, 3)
    async with store.client.pipeline(transaction=True) as pipe:  # one step, as one desk script trimming as it writes
        for u in (b, c):
            pipe.hset(store.state_key("web"), f"{u.sku}\t", script_item(u)[-1])
            pipe.xadd(STREAM, dict(to_fields(u)), id=f"{u.version}-0")
        pipe.xtrim(STREAM, maxlen=1, approximate=False)  # "b" trimmed before the read gets "c"
        await pipe.execute()


def delivered(out: Path) -> dict[str, tuple[int, int, str]]:
    """sku -> (quantity, version, status) of the last line per sku the destination received: whole lines
    only (the adapter appends in a thread of its own, so a poll may read a line half written)."""
    last: dict[str, tuple[int, int, str]] = {}
    if out.exists():
        for line in out.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            u = json.loads(line)
            last[u["sku"]] = (u["quantity"], u["version"], u["status"])
    return last


async def deliver_until(store: ChannelStore, out: Path, group: str, expected: dict[str, Any]) -> None:
    publisher = Publisher(config(group=group), store.client, JsonlAdapter(out), PublisherMetrics())

    async def there() -> bool:
        if delivered(out) != expected:
            return False
        info: Any = await store.client.xpending(STREAM, group)
        return int(info["pending"]) == 0

    try:
        await run_until(publisher, there)
    finally:
        assert delivered(out) == expected


async def test_a_value_trimmed_before_the_group_read_it_is_delivered_from_the_state_hash(
        store: ChannelStore, tmp_path: Path) -> None:
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1), value("b", 5, 2)])
    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK"), "b": (5, 2, "IN_STOCK")})

    # While the publisher is down: "a" sells out (its last change), then others move on, and the
    # stream is trimmed past the stock-out before the publisher is back.
    await desk_writes(store, [value("a", 0, 3), value("c", 3, 4, StockStatus.LOW_STOCK), value("b", 4, 5)])
    await store.client.xtrim(STREAM, maxlen=2, approximate=False)
    await deliver_until(store, out, "jsonl", {"a": (0, 3, "OUT_OF_STOCK"), "b": (4, 5, "IN_STOCK"),
                                              "c": (3, 4, "LOW_STOCK")})

    # A new destination (a group made after the trimming) gets every key's newest value too.
    fresh = tmp_path / "fresh.jsonl"
    await desk_writes(store, [value("d", 2, 6, StockStatus.LOW_STOCK)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)
    await deliver_until(store, fresh, "fresh", {"a": (0, 3, "OUT_OF_STOCK"), "b": (4, 5, "IN_STOCK"),
                                                "c": (3, 4, "LOW_STOCK"), "d": (2, 6, "LOW_STOCK")})


class Hangs:
    """A destination that never answers: the publisher is stopped with its read pending."""

    name = "hangs"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def deliver(self, channel: str, updates: list[Any]) -> None:
        self.entered.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


async def test_a_pending_entry_trimmed_before_it_was_delivered_is_delivered_from_the_state_hash(
        store: ChannelStore, tmp_path: Path) -> None:
    """Its own pending entries come back without fields once trimmed: they were dead-lettered as
    "undecodable", and the key's newest value (a stock-out) never reached the destination."""
    await desk_writes(store, [value("a", 0, 1), value("b", 7, 2)])
    stuck = Publisher(config(group="jsonl"), store.client, Hangs(), PublisherMetrics())
    task = asyncio.create_task(stuck.run())
    await asyncio.wait_for(stuck.adapter.entered.wait(), 10)  # type: ignore[attr-defined]
    stuck.stop()
    await asyncio.wait_for(task, 5)

    await desk_writes(store, [value("c", 1, 3)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # both pending entries trimmed
    out = tmp_path / "feed.jsonl"
    await deliver_until(store, out, "jsonl", {"a": (0, 1, "OUT_OF_STOCK"), "b": (7, 2, "IN_STOCK"),
                                              "c": (1, 3, "IN_STOCK")})
    assert await store.client.xlen(f"{STREAM}:dlq:jsonl") == 0


class TrimsThenHangs:
    """A destination whose first delivery lets the desk write on and trim past the group's position
    (the publisher then finds a second gap after its read), and whose second never answers."""

    name = "jsonl"

    def __init__(self, out: Path, store: ChannelStore) -> None:
        self.jsonl, self.store, self.calls = JsonlAdapter(out), store, 0
        self.hung = asyncio.Event()

    async def deliver(self, channel: str, updates: list[Any]) -> None:
        self.calls += 1
        if self.calls > 1:
            self.hung.set()
            await asyncio.Event().wait()
        await desk_writes(self.store, [value("e", 0, 5), value("f", 2, 6, StockStatus.LOW_STOCK)])
        await self.store.client.xtrim(STREAM, maxlen=1, approximate=False)
        await self.jsonl.deliver(channel, updates)

    async def close(self) -> None:
        pass


async def test_a_stop_while_catching_up_a_gap_found_after_a_read_leaves_it_owed(
        store: ChannelStore, tmp_path: Path) -> None:
    """The read has moved the group past that gap: a stop (a deploy) or a crash before its keys'
    values went out lost them for good — "e", a stock-out, was never sent. Now the next start
    resyncs every key not delivered at its version."""
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1), value("b", 5, 2)])
    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK"), "b": (5, 2, "IN_STOCK")})

    await desk_writes(store, [value("c", 3, 3), value("d", 3, 4)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # "c" trimmed unread
    adapter = TrimsThenHangs(out, store)
    publisher = Publisher(config(group="jsonl"), store.client, adapter, PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(adapter.hung.wait(), 10)  # catching up "d" and "e", found trimmed after the read
    publisher.stop()
    await asyncio.wait_for(task, 5)

    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK"), "b": (5, 2, "IN_STOCK"),
                                              "c": (3, 3, "IN_STOCK"), "d": (3, 4, "IN_STOCK"),
                                              "e": (0, 5, "OUT_OF_STOCK"), "f": (2, 6, "LOW_STOCK")})


async def test_a_resync_of_many_keys_delivers_their_stock_outs_first(store: ChannelStore, tmp_path: Path) -> None:
    """A resync from the state hash went page by page (``read_count`` keys) in the hash's order, each
    page's stock-outs first: a stock-out on a later page waited behind every earlier page's ordinary
    values and their tokens (100,000 keys at 10/s: hours). C2: the stock-outs of the whole resync go first."""
    # Pages of two keys (read_count): the stock-out "gone" is on the third, after four ordinary values.
    await desk_writes(store, [value(f"s{n}", 5 + n, n + 1) for n in range(4)] + [value("gone", 0, 5)])
    await desk_writes(store, [value("s4", 9, 6)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # a new group finds 1..5 trimmed unread
    out = tmp_path / "feed.jsonl"
    publisher = Publisher(config(group="jsonl", read_count=2), store.client, JsonlAdapter(out), PublisherMetrics())

    async def there() -> bool:
        return len(delivered(out)) == 6

    await run_until(publisher, there)
    first = json.loads(out.read_text().splitlines()[0])
    assert (first["sku"], first["quantity"]) == ("gone", 0), out.read_text()


class PublishesOnFirstDelivery:
    """A jsonl destination whose first delivery lets the desk publish ``stock_out`` meanwhile."""

    name = "jsonl"

    def __init__(self, out: Path, store: ChannelStore, stock_out: ChannelUpdate) -> None:
        self.jsonl, self.store, self.stock_out, self.published = JsonlAdapter(out), store, stock_out, False

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        if not self.published:
            self.published = True
            await desk_writes(self.store, [self.stock_out])
        await self.jsonl.deliver(channel, updates)

    async def close(self) -> None:
        pass


KEYS = 600
"""Past hash-max-listpack-entries (512): a table, whose HSCAN COUNT (read_count) bounds a step."""


async def where_the_stock_out_went(store: ChannelStore, tmp_path: Path) -> int:
    """A publisher run until the ``KEYS`` values, "last" and the stock-out "z" (published by the desk at the
    first delivery) are delivered, nothing owed: the place "z" went out in the order of deliveries."""
    out = tmp_path / "feed.jsonl"
    adapter = PublishesOnFirstDelivery(out, store, value("z", 0, KEYS + 2))
    publisher = Publisher(config(group="jsonl", read_count=50, block_ms=1), store.client, adapter, PublisherMetrics())

    async def there() -> bool:
        return len(delivered(out)) == KEYS + 2 and not await store.client.exists(f"{STREAM}:redeliver-all:jsonl")

    await run_until(publisher, there, timeout_s=30)
    return [json.loads(line)["sku"] for line in out.read_text().splitlines()].index("z")


async def test_a_stock_out_published_while_a_gap_is_caught_up_does_not_wait_for_its_end(
        store: ChannelStore, tmp_path: Path) -> None:
    """Keys whose newest values were trimmed unread were all delivered from the state hash before the
    stream was read again: a stock-out published meanwhile waited behind every one of them and their
    tokens (a publisher 100,000 entries behind, at 10/s: hours). The gap is caught up a step (one
    HSCAN call) at a time with a read of the stream between steps (C2), owed durably meanwhile (C4)."""
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(KEYS)])
    await desk_writes(store, [value("last", 1, KEYS + 1)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # a new group finds 1..600 trimmed unread
    at = await where_the_stock_out_went(store, tmp_path)
    assert at < KEYS, f"the stock-out went out after the whole gap, at {at}"


class FailsOnce:
    """A jsonl destination that fails (retryable) the first delivery with "z0" and the first with "x":
    each is dead-lettered at once (``max_attempts=1``). The first delivery with "a" (the gap's second
    sweep) lets the desk publish two stock-outs, "x" and "y", meanwhile."""

    name = "jsonl"

    def __init__(self, out: Path, store: ChannelStore) -> None:
        self.jsonl, self.store, self.failed, self.published = JsonlAdapter(out), store, set[str](), False

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        skus = {u.sku for u in updates}
        if "a" in skus and not self.published:
            self.published = True
            await desk_writes(self.store, [value("x", 0, 5), value("y", 0, 6)])
        for sku in ("z0", "x"):
            if sku in skus and sku not in self.failed:
                self.failed.add(sku)
                raise DeliveryError("503 from the destination")
        await self.jsonl.deliver(channel, updates)

    async def close(self) -> None:
        pass


async def test_stock_outs_dead_lettered_past_max_keys_after_a_gap_caught_up_are_redelivered(
        store: ChannelStore, tmp_path: Path) -> None:
    """A gap's mark (a resync of every key owed while it is caught up) was read as owed by a pass of the
    redelivery too, whose resync of every key then ran beside the gap's. The gap, done first, deleted
    the mark; dead letters past ``redeliver_max_keys`` raised it again, from nothing, to the same value;
    the pass's resync, in its sweep of the values other than stock-outs by then, deleted it as its own:
    the stock-outs "x" and "y" dead-lettered were never redelivered (C4)."""
    await desk_writes(store, [value("z0", 0, 1), value("a", 5, 2), value("b", 5, 3), value("last", 5, 4)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # a new group finds 1..3 trimmed unread
    out = tmp_path / "feed.jsonl"
    settings = {"max_attempts": 1, "redeliver_max_keys": 1, "redeliver_interval_s": 0.001, "block_ms": 1}
    publisher = Publisher(config(group="jsonl", **settings), store.client, FailsOnce(out, store), PublisherMetrics())

    async def there() -> bool:
        return delivered(out).keys() >= {"x", "y", "z0", "a", "b", "last"}

    await run_until(publisher, there)
    assert delivered(out)["x"] == (0, 5, "OUT_OF_STOCK") and delivered(out)["y"] == (0, 6, "OUT_OF_STOCK")


class TicksThenTrims:
    """A jsonl destination fed a tick ("t1") per read: each delivery of a tick lets the desk publish the
    next. The first fails (``max_attempts=1``: two keys dead-lettered, past ``redeliver_max_keys``);
    once the resync of every key that owes has ended while the gap is still caught up, the desk
    publishes "g" and "h" instead, "g" trimmed unread; the delivery of "h" never answers."""

    name = "jsonl"

    def __init__(self, out: Path, store: ChannelStore, version: int) -> None:
        self.jsonl, self.store, self.version, self.calls = JsonlAdapter(out), store, version, 0
        self.publisher: Publisher | None = None
        self.hung, self.trimmed = asyncio.Event(), 0

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        skus = {u.sku for u in updates}
        if "h" in skus:
            self.hung.set()
            await asyncio.Event().wait()
        if "t1" in skus:
            self.calls += 1
            await self._publish()
            if self.calls == 1:
                raise DeliveryError("503 from the destination")
        await self.jsonl.deliver(channel, updates)

    async def _publish(self) -> None:
        client, publisher = self.store.client, self.publisher
        assert publisher is not None
        if publisher._gap is None or await client.exists(f"{STREAM}:redeliver-all:jsonl"):
            self.version += 1
            await desk_writes(self.store, [value("t1", 1, self.version)])
            return
        self.trimmed, self.version = self.version + 1, self.version + 2
        await desk_writes(self.store, [value("g", 3, self.trimmed), value("h", 3, self.version)])
        await client.xtrim(STREAM, maxlen=1, approximate=False)  # "g" trimmed unread


async def test_a_gap_found_once_a_pass_settled_the_mark_while_another_is_caught_up_is_owed(
        store: ChannelStore, tmp_path: Path) -> None:
    """A gap found while another was caught up joined its sweep under the first gap's mark: a pass's
    resync of every key (dead letters past ``redeliver_max_keys``) that had deleted that mark meanwhile
    left nothing owed in Redis while the group read past the second gap, and a stop then lost "g" (C4)."""
    keys = 600  # past hash-max-listpack-entries (512): a table, whose HSCAN COUNT (read_count) bounds a step
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(keys)])
    await desk_writes(store, [value("t1", 1, keys + 1), value("t2", 1, keys + 2)])
    await store.client.xtrim(STREAM, maxlen=2, approximate=False)  # a new group finds 1..600 trimmed unread
    out = tmp_path / "feed.jsonl"
    adapter = TicksThenTrims(out, store, keys + 2)
    settings = {"read_count": 50, "block_ms": 1, "max_attempts": 1, "redeliver_max_keys": 1}
    adapter.publisher = publisher = Publisher(config(group="jsonl", **settings), store.client, adapter,
                                              PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    await asyncio.wait_for(adapter.hung.wait(), 30)  # the group has read past "g"
    publisher.stop()
    await asyncio.wait_for(task, 5)
    assert await store.client.exists(f"{STREAM}:redeliver-all:jsonl"), "nothing owes \"g\" its value"
    g = adapter.trimmed
    await deliver_until(store, out, "jsonl", {**delivered(out), "g": (3, g, "IN_STOCK"), "h": (3, g + 1, "IN_STOCK")})


async def blocked_reading(store: ChannelStore) -> bool:
    """A connection blocked in XREAD (``_reading``; XREADGROUP before): the publisher waits for new entries."""
    clients: Any = await store.client.client_list()
    return any(c["cmd"] in ("xread", "xreadgroup") and "b" in c["flags"] for c in clients)


async def test_a_stop_during_a_read_that_found_a_gap_leaves_it_owed(store: ChannelStore, tmp_path: Path) -> None:
    """A stop while the publisher waited for new entries, which came with the one before them trimmed
    (the desk's writes trim the stream as they append): the read took the group past the gap, then the
    stop cut it off before the gap was noted, and nothing owed "b", a stock-out, its value (C4)."""
    await desk_writes(store, [value("a", 5, 1)])
    out = tmp_path / "feed.jsonl"
    publisher = Publisher(config(group="jsonl", block_ms=60_000), store.client, JsonlAdapter(out), PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    await until(lambda: _delivered_and_reading(store, out), "a delivered, the next read waiting")
    publisher.stop()  # the read under way goes on: it is not cut off
    await stock_out_trimmed_before_the_read(store)
    await asyncio.wait_for(task, 5)
    assert await store.client.exists(f"{STREAM}:redeliver-all:jsonl"), "nothing owes \"b\" its value"
    await deliver_until(store, out, "jsonl", {"a": (5, 1, "IN_STOCK"), "b": (0, 2, "OUT_OF_STOCK"),
                                              "c": (3, 3, "IN_STOCK")})


async def _delivered_and_reading(store: ChannelStore, out: Path) -> bool:
    return "a" in delivered(out) and await blocked_reading(store)


async def test_a_stock_out_published_while_trimmed_pending_entries_taken_over_are_caught_up_does_not_wait(
        store: ChannelStore, tmp_path: Path) -> None:
    """Pending entries a takeover found trimmed (another consumer read them, then died) were resynced
    from the state hash call by call of the claim, each a whole sweep of the hash, before the takeover
    ended and the stream was read again: a stock-out published meanwhile waited behind every one of
    them. They are caught up as a gap is: a step (one HSCAN call) at a time, the stream read between
    (C2), a resync of every key owed meanwhile (C4)."""
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(KEYS)])
    await desk_writes(store, [value("last", 1, KEYS + 1)])
    await store.client.xgroup_create(STREAM, "jsonl", id="0")
    await store.client.xreadgroup("jsonl", "died", {STREAM: ">"}, count=KEYS + 1)  # read, never delivered
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # 1..KEYS trimmed while pending
    at = await where_the_stock_out_went(store, tmp_path)
    assert at < KEYS, f"the stock-out went out after every trimmed pending entry, at {at}"


class Churns:
    """A destination each delivery of which, ``rounds`` times, lets the desk publish a stock-out and
    another value and trim the stream past both: the publisher, behind the trimming, finds a gap at
    each read while the one before is still caught up."""

    name = "jsonl"

    def __init__(self, out: Path, store: ChannelStore, version: int, rounds: int) -> None:
        self.jsonl, self.store, self.version, self.rounds = JsonlAdapter(out), store, version, rounds

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        if self.rounds > 0:
            self.rounds, self.version = self.rounds - 1, self.version + 2
            await desk_writes(self.store, [value("t", 0, self.version - 1), value("u", 1, self.version)])
            await self.store.client.xtrim(STREAM, maxlen=1, approximate=False)  # "t" trimmed unread
        await self.jsonl.deliver(channel, updates)


async def test_a_publisher_finding_a_gap_at_every_read_for_long_keeps_delivering(
        store: ChannelStore, tmp_path: Path) -> None:
    """Each gap found while another was caught up wrapped the versions wanted so far in one more
    predicate: a publisher behind the stream's trimming for hours (a gap at each read) nested them past
    Python's recursion limit, and the RecursionError of the next key looked at ended the publisher."""
    await desk_writes(store, [value(f"s{n}", n + 1, n + 1) for n in range(10)] + [value("t", 1, 11)])
    await store.client.xtrim(STREAM, maxlen=1, approximate=False)  # a new group finds 1..10 trimmed unread
    out = tmp_path / "feed.jsonl"
    adapter = Churns(out, store, 11, rounds=1500)
    publisher = Publisher(config(group="jsonl", block_ms=1), store.client, adapter, PublisherMetrics())
    last = 11 + 2 * adapter.rounds

    async def there() -> bool:
        return (adapter.rounds == 0 and delivered(out).get("u") == (1, last, "IN_STOCK")
                and not await store.client.exists(f"{STREAM}:redeliver-all:jsonl"))

    await run_until(publisher, there, timeout_s=240)  # a bound on a hang: ~20 s on a busy 2-core machine
    assert delivered(out)["t"] == (0, last - 1, "OUT_OF_STOCK")
    assert all(delivered(out)[f"s{n}"] == (n + 1, n + 1, "IN_STOCK") for n in range(10))


def test_versions_owed_stay_wanted_in_bounded_memory() -> None:
    """Past ``MAX_RANGES`` the narrowest holes are joined: every version owed stays wanted, none outside them."""
    owed = Owed()
    owed.add([(v, v) for v in range(10, 10 + 4 * MAX_RANGES, 2)])  # single versions, as a takeover owes them
    owed.add([(5, 6), (7, 7), (100_000, 100_009)])  # gaps; adjacent ones merged
    assert len(owed._ranges) <= MAX_RANGES
    assert all(owed(v) for v in [5, 6, 7, *range(10, 10 + 4 * MAX_RANGES, 2), *range(100_000, 100_010)])
    assert not any(owed(v) for v in (4, 8, 9, 99_999, 100_010))
