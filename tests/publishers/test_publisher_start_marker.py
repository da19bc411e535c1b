"""A start's marker in the channel stream (each start of the service writes one first to every channel: no update,
the version it follows): a publisher follows it on and acknowledges it, never delivers it nor dead-letters it, and
names from it the keys it delivered at versions above what it follows (Redis lost them, C4); where it follows
exactly what the publisher read (a plain restart), nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import MARKER, start_marker, to_fields
from publishers import JsonlAdapter, Publisher, PublisherMetrics
from tests.publishers.test_publisher import config, run_until
from tests.publishers.test_publisher_trimmed import STREAM, deliver_until, delivered, desk_writes, value

RESTAMP, DEAD = f"{STREAM}:restamp", f"{STREAM}:dlq:jsonl"
DELIVERED = {"a": (5, 1, "IN_STOCK"), "b": (3, 2, "IN_STOCK")}


async def read_past(store: ChannelStore, out: Path, version: int) -> PublisherMetrics:
    """A publisher run until its group read up to ``version`` and holds nothing pending: its metrics."""
    metrics = PublisherMetrics()
    publisher = Publisher(config(group="jsonl"), store.client, JsonlAdapter(out), metrics)

    async def there() -> bool:
        groups: Any = await store.client.xinfo_groups(STREAM)
        info: Any = await store.client.xpending(STREAM, "jsonl")
        return groups[0]["last-delivered-id"] == f"{version}-0".encode() and int(info["pending"]) == 0

    await run_until(publisher, there)
    return metrics


def deliveries(metrics: PublisherMetrics) -> float:
    """Every update the publisher counted, whatever its outcome."""
    return sum(sample.value for family in metrics.registry.collect() if family.name == "atp_publisher_deliveries"
               for sample in family.samples if sample.name.endswith("_total"))


async def test_a_marker_names_what_was_delivered_above_the_version_it_follows_and_is_not_delivered_C4(
        store: ChannelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
    await deliver_until(store, out, "jsonl", DELIVERED)
    await store.write([("web", 100_000, [start_marker("web", 100, 1, 0)])])  # Redis held version 1 at the start
    caplog.set_level(logging.WARNING, logger="publishers")
    metrics = await read_past(store, out, 100)
    assert await store.client.hgetall(RESTAMP) == {b"b\t": b"2"}, "b's version 2 delivered, and lost"
    assert [r for r in caplog.records if "delivered at versions Redis has since lost" in r.getMessage()]
    assert delivered(out) == DELIVERED and deliveries(metrics) == 0, "the marker delivered, or counted"
    assert await store.client.xlen(DEAD) == 0, "the marker dead-lettered"
    assert await store.client.hlen(store.state_key("web")) == 2, "the marker in the state hash"


async def test_a_marker_that_follows_what_was_read_names_nothing_and_says_nothing(
        store: ChannelStore, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A plain restart: its marker follows exactly the newest version Redis held, which the publisher read."""
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
    await deliver_until(store, out, "jsonl", DELIVERED)
    await store.write([("web", 100_000, [start_marker("web", 100, 2, 0)])])
    caplog.set_level(logging.WARNING, logger="publishers")
    await read_past(store, out, 100)
    await desk_writes(store, [value("a", 0, 101)])  # the run's updates follow on from its marker
    await deliver_until(store, out, "jsonl", {**DELIVERED, "a": (0, 101, "OUT_OF_STOCK")})
    assert not await store.client.exists(RESTAMP) and await store.client.xlen(DEAD) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_entry_marked_with_a_kind_this_publisher_does_not_know_is_dead_lettered_naming_it(
        store: ChannelStore, tmp_path: Path) -> None:
    """Not delivered as an update, nor passed over in silence: what a later version means by it is not known here."""
    out = tmp_path / "feed.jsonl"
    await desk_writes(store, [value("a", 5, 1), value("b", 3, 2)])
    await deliver_until(store, out, "jsonl", DELIVERED)
    await store.client.xadd(STREAM, {**to_fields(start_marker("web", 100, 2, 0)), MARKER: "rewind"}, id="100-0")
    await read_past(store, out, 100)
    ((_, letter),) = await store.client.xrange(DEAD)
    assert b"'rewind'" in letter[b"reason"] and letter[b"entry_id"] == b"100-0"
    assert delivered(out) == DELIVERED
