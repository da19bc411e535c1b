"""A shard's snapshot carries a checksum of its body, checked at every read (R7, E10: never a silently
wrong state). The log behind a snapshot is trimmed, so nothing replayed after it could correct a
snapshot whose bytes changed in Redis: without the check, a flipped quantity was served as stock."""

from __future__ import annotations

import os
import struct

import pytest
import redis

from atp_service.storage.log import LogStore, SnapshotUnreadable
from atp_service.storage.records import SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC, sealed_snapshot
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

SNAP = "atp:{g0}:snap"
PART = 64 << 10


async def _stopped_with_ten_received(start_service: ServiceFactory, redis_url: str) -> tuple[redis.Redis, bytes]:
    """A service of one shard that received 10 units of SKU-FLIP at DC, stopped (its final snapshot
    written, the log trimmed behind it); Redis and the stored snapshot."""
    service, client = await start_service(shards=1)
    await client.record_events([receipt("e1", "SKU-FLIP", "DC", 10)])
    await client.close()
    await service.stop(grace_s=0.1)
    r = redis.Redis.from_url(redis_url)
    raw = r.get(SNAP)
    assert isinstance(raw, bytes) and struct.pack("<q", 10) in raw
    return r, raw


async def test_a_snapshot_whose_stock_changed_in_redis_stops_the_start_naming_the_checksum(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The reviewer's reproduction: one int64 of the on-hand column flipped from 10 to 1000. Before,
    the start answered 1000 units with health SERVING; now it is refused (exit status 2)."""
    from atp_service.app.keyspace import StartupError

    r, raw = await _stopped_with_ten_received(start_service, redis_url)
    r.set(SNAP, raw.replace(struct.pack("<q", 10), struct.pack("<q", 1000), 1))
    with pytest.raises(StartupError, match=r"shard 0: the snapshot at atp:\{g0\}:snap fails its checksum"):
        await start_service(shards=1)


async def test_a_snapshot_without_the_header_written_before_it_still_recovers(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A rolling upgrade: the previous version's snapshots are the msgpack record alone."""
    r, raw = await _stopped_with_ten_received(start_service, redis_url)
    assert raw.startswith(SNAPSHOT_MAGIC)
    r.set(SNAP, raw[SNAPSHOT_HEADER_BYTES:])
    _, client = await start_service(shards=1)
    (position,) = await client.availability([("SKU-FLIP", "DC")])
    assert position.on_hand == 10


async def test_a_snapshot_in_parts_is_checked_whole(store: LogStore) -> None:
    """The checksum covers the assembled snapshot: a byte changed in a later part is found too."""
    for seq in range(1, 3):
        await store.submit(0, seq, b"e")
    body = os.urandom(3 * PART + 17)
    await store.write_snapshot(0, 2, body, part_bytes=PART)
    stored = await store.client.get(store.keys.snap(0))
    assert stored == sealed_snapshot(body)
    flipped = bytearray(stored)
    flipped[2 * PART + 5] ^= 0x01
    await store.client.set(store.keys.snap(0), bytes(flipped))
    with pytest.raises(SnapshotUnreadable, match=r"shard 0: the snapshot at t:\{g0\}:snap fails its checksum"):
        await store.load_snapshot(0)


@pytest.mark.parametrize("stored, refusal", [
    (SNAPSHOT_MAGIC + b"\x01", r"is cut short: 5 bytes"),
    (SNAPSHOT_MAGIC + b"\x02" + b"\0" * 8, r"is in snapshot format 2, .*start the version that wrote it"),
    (SNAPSHOT_MAGIC[:1] + b"XYZ" + b"\x01" + b"\0" * 8, r"does not start with"),
])
async def test_a_snapshot_header_this_version_cannot_read_is_refused_naming_why(
        store: LogStore, stored: bytes, refusal: str) -> None:
    await store.client.set(store.keys.snap(0), stored)
    with pytest.raises(SnapshotUnreadable, match=r"shard 0: the snapshot at t:\{g0\}:snap " + refusal):
        await store.load_snapshot(0)
