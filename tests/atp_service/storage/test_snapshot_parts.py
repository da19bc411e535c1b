"""A snapshot written in parts (``snapshot_parts.py``): stored whole and persistent, the log trimmed
behind it; a part of a fenced try, or a part after the staging key was lost, changes nothing; a
service whose shard's snapshot takes several parts recovers the same state after a restart. Past
``snapshot_piece_bytes`` it is spread over several keys, none larger, replaced together; a snapshot an
earlier version stored in one key past that size is read, then replaced by one in several."""

from __future__ import annotations

import os

import pytest
import redis
from redis.exceptions import RedisError

from atp_client import AtpClient
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Call
from atp_service.storage.records import sealed_snapshot
from atp_service.storage.snapshot_parts import PART_SCRIPT, STAGING_TTL_MS
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

SNAP, PARTS, LOG = "t:{g0}:snap", "t:{g0}:snap-parts", "t:{g0}:log"
PART = 64 << 10


async def _log_of(store: LogStore, seqs: range) -> None:
    for seq in seqs:
        await store.submit(0, seq, b"e")


async def test_a_snapshot_past_the_part_size_is_stored_whole_and_trims_the_log(store: LogStore) -> None:
    await _log_of(store, range(1, 4))
    data = os.urandom(5 * PART + 123)  # six parts with its header, the last a short one
    assert await store.write_snapshot(0, 2, data, part_bytes=PART) == len(data)
    assert await store.client.get(SNAP) == sealed_snapshot(data)
    assert await store.client.ttl(SNAP) == -1, "the snapshot kept the staging key's time to live"
    assert not await store.client.exists(PARTS, store.keys.snap_parts_try(0))
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"2-0", b"3-0"]  # its own entry kept


async def test_a_part_of_a_fenced_try_is_refused_and_the_stored_snapshot_stands(store: LogStore) -> None:
    """R7: a try that timed out may still have parts on their way; the fence raised before the next
    try refuses them, so they can neither extend the next try's parts nor become a snapshot."""
    await _log_of(store, range(1, 3))
    old = os.urandom(PART // 2)
    await store.write_snapshot(0, 1, old, part_bytes=PART)
    stale = (store.epochs[0], store._tokens[0])
    await store.fence(0)  # what Checkpoints does before it tries again after a failed write
    late = Call(PART_SCRIPT, [store.keys.owner(0), PARTS, store.keys.snap_parts_try(0), store.keys.fence(0)],
                [stale[0], b"x" * PART, STAGING_TTL_MS, stale[1], 0, "late", 0])
    with pytest.raises(RedisError, match="STALE"):
        await store.nodes.run_one(late)
    assert not await store.client.exists(PARTS)
    assert await store.client.get(SNAP) == sealed_snapshot(old)


async def test_a_snapshot_in_parts_past_the_end_of_the_log_is_refused_and_the_stored_one_stands(
        store: LogStore) -> None:
    """R7: Redis lost acknowledged entries (an older AOF): the last part finds the log ending before
    the snapshot's seq and refuses it (GAP), as a snapshot in one call is refused."""
    await _log_of(store, range(1, 3))
    old = os.urandom(PART // 2)
    await store.write_snapshot(0, 1, old, part_bytes=PART)
    with pytest.raises(RedisError, match="GAP"):
        await store.write_snapshot(0, 5, os.urandom(3 * PART), part_bytes=PART)
    assert await store.client.get(SNAP) == sealed_snapshot(old)
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"1-0", b"2-0"]


async def test_parts_whose_staging_key_was_lost_fail_the_write_and_the_stored_snapshot_stands(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await _log_of(store, range(1, 3))
    old = os.urandom(PART // 2)
    await store.write_snapshot(0, 1, old, part_bytes=PART)
    run_one = store.nodes.run_one
    calls = 0

    async def losing_the_staging_key_after_the_first_part(call: Call, extra_s: float = 0.0) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            await store.client.delete(PARTS)  # expired, or evicted, between two parts
        return await run_one(call, extra_s)

    monkeypatch.setattr(store.nodes, "run_one", losing_the_staging_key_after_the_first_part)
    with pytest.raises(RedisError, match="PARTS_LOST"):
        await store.write_snapshot(0, 2, os.urandom(3 * PART), part_bytes=PART)
    assert await store.client.get(SNAP) == sealed_snapshot(old)
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"1-0", b"2-0"]  # not trimmed
    monkeypatch.undo()
    fresh = os.urandom(3 * PART)
    await store.write_snapshot(0, 2, fresh, part_bytes=PART)  # the next try starts from the first part
    assert await store.client.get(SNAP) == sealed_snapshot(fresh)


def _pieces(r: redis.Redis, prefix: str = "atp:") -> list[int]:
    """The size of each key shard 0's snapshot is in, as Redis holds it."""
    count = int(r.get(f"{prefix}{{g0}}:snap-pieces") or 1)
    return [r.strlen(f"{prefix}{{g0}}:snap" + (f":{piece}" if piece else "")) for piece in range(count)]


async def test_a_snapshot_past_the_piece_size_is_spread_over_keys_and_replaced_whole(
        store: LogStore, redis_url: str) -> None:
    """Redis refuses a string past 512 MB: a larger snapshot is in several keys, each at most a piece,
    read back joined; the next snapshot, in more keys, fewer or one, leaves none of the old ones."""
    await _log_of(store, range(1, 6))
    r = redis.Redis.from_url(redis_url)
    sizes = {}
    for seq, (size, pieces) in enumerate([(5 * PART, 3), (3 * PART, 2), (7 * PART, 4), (PART // 2, 1)], start=1):
        data = os.urandom(size)
        await store.write_snapshot(0, seq, data, part_bytes=PART // 2, piece_bytes=2 * PART)
        sizes[seq] = _pieces(r, "t:")
        assert len(sizes[seq]) == pieces and max(sizes[seq]) <= 2 * PART
        assert await store._snapshot_bytes(0) == sealed_snapshot(data)
        assert await store.client.ttl(SNAP) == -1 and await store.client.ttl(store.keys.snap(0, pieces - 1)) == -1
    assert not r.keys("t:{g0}:snap:*") and not r.keys("t:{g0}:snap-*"), "a key of an older snapshot was left"
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"4-0", b"5-0"]


async def test_a_try_cut_half_way_through_its_pieces_leaves_the_old_snapshot_whole(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    await _log_of(store, range(1, 3))
    old = os.urandom(5 * PART)
    await store.write_snapshot(0, 1, old, part_bytes=PART, piece_bytes=2 * PART)
    run_one, calls = store.nodes.run_one, 0

    async def lost_in_the_second_piece(call: Call, extra_s: float = 0.0) -> object:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RedisError("Connection lost")  # the try's fourth part: its second piece half written
        return await run_one(call, extra_s)

    monkeypatch.setattr(store.nodes, "run_one", lost_in_the_second_piece)
    with pytest.raises(RedisError, match="Connection lost"):
        await store.write_snapshot(0, 2, os.urandom(7 * PART), part_bytes=PART, piece_bytes=2 * PART)
    assert await store._snapshot_bytes(0) == sealed_snapshot(old)
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"1-0", b"2-0"]  # not trimmed
    monkeypatch.undo()
    await store.fence(0)
    fresh = os.urandom(7 * PART)
    await store.write_snapshot(0, 2, fresh, part_bytes=PART, piece_bytes=2 * PART)
    assert await store._snapshot_bytes(0) == sealed_snapshot(fresh)


async def _available(client: AtpClient, skus: list[str]) -> list[int]:
    return [a.available for at in range(0, len(skus), 1000)
            for a in await client.availability([(sku, "DC") for sku in skus[at:at + 1000]])]


async def test_a_service_recovers_the_same_state_from_a_snapshot_stored_in_parts(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    service, client = await start_service(shards=1, snapshot_part_bytes=PART)
    skus = [f"sku-{i:05d}" for i in range(3000)]
    for at in range(0, len(skus), 500):
        await client.record_events([receipt(f"r-{sku}", sku, "DC", 7) for sku in skus[at:at + 500]])
    await client.reserve("held", [(skus[0], "DC", 2), (skus[-1], "DC", 3)], ttl_seconds=3600)
    before = await _available(client, skus)
    await service.stop(grace_s=0.1)  # drained, then the final snapshot: several parts at 64 KiB, in one key
    assert len(_pieces(r)) == 1 and _pieces(r)[0] > 3 * PART and r.xlen("atp:{g0}:log") == 1
    # Past the piece size: as an earlier version stored any snapshot, read whole, then replaced by keys of one piece.
    again, client = await start_service(shards=1, snapshot_part_bytes=PART, snapshot_piece_bytes=2 * PART)
    assert await _available(client, skus) == before
    await client.record_events([receipt("r-after", "sku-after", "DC", 1)])  # a snapshot is due at the stop
    await again.stop(grace_s=0.1)
    assert len(_pieces(r)) > 1 and max(_pieces(r)) <= 2 * PART
    _, client = await start_service(shards=1, snapshot_part_bytes=PART, snapshot_piece_bytes=2 * PART)
    assert await _available(client, skus) == before
    assert before[0] == 5 and before[-1] == 4 and before[1] == 7
    assert (await client.get_reservation("held")).reservation_id == "held"


async def test_parts_of_an_earlier_try_that_redis_came_back_with_are_never_joined_to_this_one(
        store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """R7, E10: Redis came back from older data mid-snapshot (a restart from an older RDB, a failover to
    a replica that lagged) holding the staging key an earlier, failed try left, as long as the parts this
    try had written. The length check alone let this try's next part extend it and its last part move the
    mixture into place — a snapshot of neither try, the log trimmed behind it: recovery refused the shard
    (undecodable) or, worse, served a state no log replay gives. The parts are now bound to their try."""
    await _log_of(store, range(1, 4))
    run_one = store.nodes.run_one
    calls, cut_at, on_cut = 0, 4, None

    async def cut_before_the_fourth_part(call: Call, extra_s: float = 0.0) -> object:
        nonlocal calls
        calls += 1
        if calls == cut_at and on_cut is not None:
            await on_cut()
        return await run_one(call, extra_s)

    async def timed_out() -> None:
        raise RedisError("Timeout reading from socket")  # the earlier try's fourth part never answered

    monkeypatch.setattr(store.nodes, "run_one", cut_before_the_fourth_part)
    on_cut = timed_out
    earlier = os.urandom(5 * PART)
    with pytest.raises(RedisError, match="Timeout"):
        await store.write_snapshot(0, 2, earlier, part_bytes=PART)
    image = await saved(store.client)  # the older data: the earlier try's three parts staged
    await store.fence(0)  # what Checkpoints does before the next try

    async def back_from_older_data() -> None:
        await restored(store.client, image, at_once=True)

    calls, on_cut = 0, back_from_older_data
    current = os.urandom(5 * PART)
    with pytest.raises(RedisError, match="PARTS_LOST"):
        await store.write_snapshot(0, 3, current, part_bytes=PART)
    assert await store.client.get(SNAP) is None, "a snapshot of neither try was stored"
    assert [i for i, _ in await store.client.xrange(LOG)] == [b"1-0", b"2-0", b"3-0"]  # not trimmed
    monkeypatch.undo()
    await store.fence(0)
    await store.write_snapshot(0, 3, current, part_bytes=PART)  # the next try, from its first part
    assert await store.client.get(SNAP) == sealed_snapshot(current)
