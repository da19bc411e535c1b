"""Recovery's reads come back in replies of bounded size, each within the socket timeout: a snapshot in
parts, as it is written in parts, and the log in replies of about as many bytes.

The write of a large snapshot is allowed time for its size (``snapshot_write_mb_per_s``) and goes in
parts (``snapshot_part_bytes``); its read at recovery was one ``GET``, held to ``redis_timeout_s``
whatever its size. Where Redis's replies come slower than the snapshot's size over that timeout (a
shard of ~136 MB at the 20 MB/s the write is allowed: ~7 s against 2 s), the read timed out at every
try: the start waited for Redis for ever (health NOT_SERVING), and a group taken over (leases) was
given back at every taking. Here a proxy passes Redis's replies at a bounded rate, so that reading
the snapshot whole takes four times the socket timeout and each part a fraction of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from atp_service.storage.log import LogStore
from atp_service.storage.log_reads import LogReads, SnapshotChanged
from atp_service.storage.records import SnapshotUnreadable, sealed_snapshot
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on

PART = 16 << 10
LOG_REPLY = 2 << 10
TIMEOUT_S = 0.5
SKUS = [f"sku-{i:05d}" for i in range(3000)]


class ThrottlingProxy:
    """A TCP proxy in front of Redis passing its replies at most ``bytes_per_s`` (a slow link); commands
    pass at once. The rate bounds how soon a reply can arrive, whatever else the host does."""

    def __init__(self, port: int, bytes_per_s: float) -> None:
        self.port, self.bytes_per_s = port, bytes_per_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]
        for coro in (self._pipe(reader, up_writer, 0.0), self._pipe(up_reader, writer, self.bytes_per_s)):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(4096 if rate else 65536):
                writer.write(chunk)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
        writer.close()


@contextlib.asynccontextmanager
async def _started_through_proxy(redis_url: str, rate: float, what: str) -> AsyncIterator[Any]:
    """A client of a service started on one shard through a proxy passing Redis's replies at ``rate`` bytes a
    second; a start that does not end in 30 s (it takes seconds) fails: each read of its ``what`` timed out."""
    proxy = ThrottlingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]), rate)
    url = await proxy.start()
    try:
        async with services_on(url, redis_timeout_s=TIMEOUT_S) as start:
            starting = asyncio.ensure_future(start(shards=1))
            done, _ = await asyncio.wait([starting], timeout=30)  # a hang guard, not a timing target
            if not done:
                starting.cancel()
                raise AssertionError(f"the start never read the {what}: each read timed out")
            yield starting.result()[1]
    finally:
        await proxy.close()


async def test_a_snapshot_larger_than_the_socket_timeout_can_carry_is_read_in_parts_and_recovered(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LogReads, "reply_bytes", PART)  # 1 MiB: the snapshot here, scaled down, in parts
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service(shards=1, snapshot_part_bytes=PART)
    for at in range(0, len(SKUS), 500):
        await client.record_events([receipt(f"r-{sku}", sku, "DC", 7) for sku in SKUS[at:at + 500]])
    await client.reserve("held", [(SKUS[0], "DC", 2)], ttl_seconds=3600)
    await client.close()
    await service.stop(grace_s=0.1)  # its final snapshot, in parts
    size = r.strlen("atp:{g0}:snap")
    assert size > 8 * PART and r.xlen("atp:{g0}:log") == 1
    # Whole, the snapshot takes 4 x the timeout to come back; a part of it, a quarter or less.
    rate = size / (4 * TIMEOUT_S)
    assert PART / rate < TIMEOUT_S / 4
    async with _started_through_proxy(redis_url, rate, "snapshot") as again:
        (a,) = await again.availability([(SKUS[0], "DC")])
        assert (a.on_hand, a.reserved) == (7, 2)
        assert (await again.get_reservation("held")).reservation_id == "held"



@pytest.mark.parametrize("same_size", [True, False])
async def test_a_snapshot_that_changes_between_its_parts_is_read_again_not_joined(
        store: LogStore, monkeypatch: pytest.MonkeyPatch, same_size: bool) -> None:
    """Redis back from older data between two parts of the read (nothing else writes a snapshot while its
    shard is recovered): the parts of two snapshots joined would fail the checksum, a refused start (exit 2)
    for a Redis that came back. The read raises a storage error instead, tried again like Redis away."""
    monkeypatch.setattr(LogReads, "reply_bytes", PART)
    await store.submit(0, 1, b"e")
    newer = os.urandom(5 * PART)
    await store.write_snapshot(0, 1, newer, part_bytes=PART)
    key = store.keys.snap(0)
    older = sealed_snapshot(os.urandom(5 * PART if same_size else 4 * PART))  # what an older RDB held
    getrange, calls = store.client.getrange, 0

    async def redis_back_from_older_data_after_the_first_part(name: str, start: int, end: int) -> bytes:
        nonlocal calls
        calls += 1
        got: bytes = await getrange(name, start, end)
        if calls == 1:
            await store.client.set(key, older)
        return got

    monkeypatch.setattr(store.client, "getrange", redis_back_from_older_data_after_the_first_part)
    with pytest.raises(SnapshotChanged):
        await store.load_snapshot(0)
    assert calls > 1
    assert await store._snapshot_bytes(0) == older  # read again: what Redis holds now, whole


async def test_a_log_tail_larger_than_the_socket_timeout_can_carry_is_read_in_bounded_replies(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the log after the snapshot: read 2,000 entries a reply, whatever their size. Entries
    of a bulk load (a ``LoadCounts`` call of 50,000 rows: an entry per shard of ~100 KB) left since the last
    snapshot (up to ``snapshot_interval_s``, 5 min) made one reply of every one of them, and the start after
    a crash waited for Redis for ever. Replies now hold about ``reply_bytes`` (whole entries) each."""
    monkeypatch.setattr(LogReads, "reply_bytes", LOG_REPLY)
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service(shards=1, snapshot_every_entries=100_000, snapshot_interval_s=3600)
    for at in range(0, len(SKUS), 50):  # 60 entries of 50 facts each (~2.3 KB)
        await client.record_events([receipt(f"r-{sku}", sku, "DC", 7) for sku in SKUS[at:at + 50]])
    # Left running (a kill -9): the next start fences it, and replays the whole log.
    assert not r.exists("atp:{g0}:snap") and r.xlen("atp:{g0}:log") == len(SKUS) // 50
    sizes = [len(fields[b"e"]) for _, fields in r.xrange("atp:{g0}:log")]
    rate = sum(sizes) / (4 * TIMEOUT_S)  # the log whole: 4 x the timeout; a reply: a quarter at most
    assert 2 * max(LOG_REPLY, *sizes) / rate < TIMEOUT_S / 4
    async with _started_through_proxy(redis_url, rate, "log") as again:
        answers = await again.availability([(sku, "DC") for sku in SKUS[::50]])
        assert [a.on_hand for a in answers] == [7] * len(answers)


async def test_a_snapshot_in_several_keys_that_changes_between_its_keys_is_read_again_not_joined(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same past ``snapshot_piece_bytes``: Redis back from older data, holding an older snapshot in as
    many keys, after the first key was read. The first key of the newer joined to the others of the older
    failed the checksum (SnapshotUnreadable: a refused start, exit 2, for a Redis holding a good snapshot)."""
    monkeypatch.setattr(LogReads, "reply_bytes", PART)
    await store.submit(0, 1, b"e")
    await store.write_snapshot(0, 1, os.urandom(5 * PART), part_bytes=PART, piece_bytes=2 * PART)
    assert await store.client.get(store.keys.snap_pieces(0)) == b"3"
    older = sealed_snapshot(os.urandom(5 * PART))  # what an older RDB held: three keys too
    pieces = [older[at:at + 2 * PART] for at in range(0, len(older), 2 * PART)]
    getrange, second = store.client.getrange, store.keys.snap(0, 1)

    async def redis_back_from_older_data_before_the_second_key(name: str, start: int, end: int) -> bytes:
        if name == second and start == 0 and await store.client.get(store.keys.snap(0, 2)) != pieces[2]:
            for piece, value in enumerate(pieces):
                await store.client.set(store.keys.snap(0, piece), value)
        got: bytes = await getrange(name, start, end)
        return got

    monkeypatch.setattr(store.client, "getrange", redis_back_from_older_data_before_the_second_key)
    with pytest.raises(SnapshotChanged):
        await store.load_snapshot(0)
    assert await store._snapshot_bytes(0) == older  # read again: what Redis holds now, whole


async def test_a_snapshot_key_missing_for_good_is_unreadable_not_read_again_for_ever(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One of the keys ``snap-pieces`` names deleted (by hand, evicted): taken for a change under the read
    (SnapshotChanged, read again), it was missing at every try and the shard's recovery never ended."""
    monkeypatch.setattr(LogReads, "reply_bytes", PART)
    await store.submit(0, 1, b"e")
    await store.write_snapshot(0, 1, os.urandom(5 * PART), part_bytes=PART, piece_bytes=2 * PART)
    await store.client.delete(store.keys.snap(0, 1))
    with pytest.raises(SnapshotUnreadable, match=r"snap:1.*is missing"):
        await store.load_snapshot(0)
