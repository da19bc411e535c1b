"""A publisher that lost its lease (paused past it, its request hung meanwhile) writes no dead letter: the
entries it read are still pending, and the holder delivers them, or dead-letters them, itself. A stale
holder's dead letter was a second one of the same update (or one of an update delivered fine), and the
keys it left owed were the new holder's bookkeeping written by a publisher that no longer keeps it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from atp_service.storage.channel_store import ChannelStore
from publishers import DeliveryError, JsonlAdapter, Publisher, PublisherConfig, PublisherMetrics
from tests.publishers.test_publisher import config, run_until
from tests.publishers.test_publisher_trimmed import STREAM, blocked_reading, delivered, desk_writes, value
from tests.waiting import until

NEXT_HOLDER = "next-holder/1/0"
"""The token of the publisher that took the lease over once this one's lapsed."""


def settings(**more: Any) -> PublisherConfig:
    """A lease longer than the test: it is lost only where the test hands it over, never by a late renewal."""
    return config(**{"group": "jsonl", "lease_s": 60.0, "send_timeout_s": 1.0, "max_attempts": 1, "block_ms": 60_000,
                     **more})


class LapsesDuringTheRequest:
    """A destination whose request outlives the sender's lease: while it hangs the lease lapses and the
    next holder takes it; then it fails (retryable), the last attempt (``max_attempts=1``)."""

    name = "jsonl"

    def __init__(self, store: ChannelStore) -> None:
        self.store, self.calls = store, 0

    async def deliver(self, channel: str, updates: list[Any]) -> None:
        self.calls += 1
        await self.store.client.set(settings().lease_key, NEXT_HOLDER)
        raise DeliveryError("timed out after 1 s")

    async def close(self) -> None:
        pass


async def lost_the_lease(publisher: Publisher, store: ChannelStore, cfg: PublisherConfig) -> None:
    """Run ``publisher`` until it has lost the lease (it stands by then), and stop it."""
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: _standing_by(publisher), "the publisher lost its lease")
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)
    assert await store.client.get(cfg.lease_key) == NEXT_HOLDER.encode()


async def _standing_by(publisher: Publisher) -> bool:
    return not publisher._holding.lease.held and publisher._halt.is_set()


async def test_a_holder_whose_lease_lapsed_during_its_last_attempt_writes_no_dead_letter(
        store: ChannelStore, tmp_path: Path) -> None:
    cfg = settings()
    await desk_writes(store, [value("a", 0, 1)])
    adapter = LapsesDuringTheRequest(store)
    publisher = Publisher(cfg, store.client, adapter, PublisherMetrics())
    await lost_the_lease(publisher, store, cfg)
    assert adapter.calls == 1
    assert await store.client.xlen(cfg.dead_letter_stream) == 0, "a dead letter written without the lease"
    assert not await store.client.exists(cfg.redeliver_key), "keys owed written without the lease"
    info: Any = await store.client.xpending(STREAM, "jsonl")
    assert int(info["pending"]) == 1  # for the next holder to take over

    await store.client.delete(cfg.lease_key)  # the next holder, here the same publisher started again
    out = tmp_path / "feed.jsonl"
    again = Publisher(settings(block_ms=50), store.client, JsonlAdapter(out), PublisherMetrics())

    async def there() -> bool:
        return delivered(out) == {"a": (0, 1, "OUT_OF_STOCK")}

    await run_until(again, there)


async def test_a_holder_whose_lease_lapsed_writes_no_dead_letter_of_an_entry_it_cannot_read(
        store: ChannelStore) -> None:
    """Reads are not fenced: a holder past its lease may still read a foreign entry, but not dead-letter it."""
    cfg = settings()
    publisher = Publisher(cfg, store.client, JsonlAdapter(Path("/dev/null")), PublisherMetrics())
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: blocked_reading(store), "the publisher waiting for new entries")
        await store.client.set(cfg.lease_key, NEXT_HOLDER)  # its lease lapsed, taken over (not yet noticed)
        await store.client.xadd(STREAM, {"not": "an update"}, id="1-0")
        await until(lambda: _standing_by(publisher), "the publisher lost its lease")
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)
    assert await store.client.xlen(cfg.dead_letter_stream) == 0, "a dead letter written without the lease"
