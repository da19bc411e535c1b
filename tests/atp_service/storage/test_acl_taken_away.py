"""A command the Redis user's ACL no longer allows, taken away while the service serves (``ACL SETUSER … -hset``):
Redis checks each command of a Lua script against the ACL as it runs, and undoes nothing of a script that fails
half-way. The start's check (``app/permissions.py``) cannot see a change made after it, so each write script asks
the ACL (``redis.acl_check_cmd``) for every command it runs after its first change before making any: refused
whole (DENIED), nothing written, never half of it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.exceptions import RedisError, ResponseError

from atp_service.intake.quarantine import Acks, QuarantineStream
from atp_service.storage.channel_store import ChannelStore, WriteRefused
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log import LogStore, connect
from atp_service.storage.nodes import open_nodes
from atp_service.storage.records import sealed_snapshot
from reservation import ChannelUpdate, FactKind, Limits, StockStatus
from reservation import fact as make_fact
from tests.atp_service.acl_user import AclUser, acl_user

T = 1_700_000_000_000


@pytest.fixture
async def user(redis_url: str) -> AsyncIterator[AclUser]:
    async with acl_user(redis_url) as made:
        yield made


@asynccontextmanager
async def _log_of_three_entries(user: AclUser) -> AsyncIterator[LogStore]:
    """A shard log (group 0) of three entries, written as ``user``; its client closed after."""
    client = connect(user.url, 5.0)
    store = LogStore(client, "t:", pipeline_max=64)
    try:
        await store.claim(4)
        for seq in range(1, 4):
            await store.submit(0, seq, b"e")
        yield store
    finally:
        await client.aclose()


def _update(sku: str, quantity: int, version: int) -> ChannelUpdate:
    return ChannelUpdate("web", sku, "DC", quantity, None, StockStatus.IN_STOCK, version, T, T)


async def test_a_channel_write_whose_hset_the_acl_took_away_writes_no_stream_entry_C4(
        user: AclUser) -> None:
    """The write script's XADDs landed, its HSET refused: the desk's settle found the versions in the stream and
    took them for published, while the state hash (what a restart, and a publisher behind the stream's trimming,
    take for published) kept the values before them — a destination left on a value the desk no longer knew it
    showed (C4). Refused whole now: nothing of it landed, the updates given back."""
    url, admin = user.url, user.admin
    client = connect(url, 5.0)
    store = ChannelStore(client, "t:", epoch=lambda: 1)
    try:
        await client.set(Keyspace("t:").owner(CHANNELS), 1)
        await store.write([("web", 1000, [_update("A", 5, 1)])])
        await user.take_away("hset")
        with pytest.raises(WriteRefused, match=r"^DENIED"):
            await store.write([("web", 1000, [_update("A", 0, 2)]), ("pickup", 1000, [_update("A", 0, 1)])])
        assert [entry for entry, _ in await admin.xrange(store.stream("web"))] == [b"1-0"]  # was: 2-0 too
        assert not await admin.exists(store.stream("pickup"))
        await user.give_back("hset")
        await store.write([("web", 1000, [_update("A", 0, 2)])])  # given back, written again
        assert await admin.hget(store.state_key("web"), "A\tDC") is not None
    finally:
        await store.aclose()


async def test_a_quarantine_write_whose_zadd_the_acl_took_away_writes_the_fact_at_no_try_E8(
        user: AclUser) -> None:
    """The quarantine script's XADD landed, the ZADD of the fact's digest refused: the fact on the stream, its
    digest not in the set, its input entry not acknowledged — owed, written again at every retry (``write_owed``),
    one more entry each time while the ACL lacked ZADD (E8: each fact written once). Refused whole now: nothing
    written, nothing acknowledged, the fact owed until the ACL allows the write."""
    url, admin = user.url, user.admin
    writer = open_nodes(url, 5.0, cluster=False)
    stream = QuarantineStream("t:{in}:quarantine", 1000)
    late = make_fact("e1", "pos", FactKind.SALE.value, "A", "S1", 1, T, "", T, Limits(), "event_time_ms")
    try:
        await admin.xgroup_create("t:{in}:pos", "g", "0", mkstream=True)
        entry = await admin.xadd("t:{in}:pos", {"f": "v"})
        await admin.xreadgroup("g", "c1", {"t:{in}:pos": ">"})  # pending to c1, as the reader left it
        acks = Acks("g", "c1", [("t:{in}:pos", entry)], run=1)
        await user.take_away("zadd")
        for _ in range(2):  # the write, then write_owed's
            with pytest.raises(ResponseError, match=r"^DENIED ZADD"):
                await stream.write(writer, [(late, "late")], acks)
        assert await admin.xlen(stream.stream) == 0  # was: 2, the fact written at each try
        assert (await admin.xpending("t:{in}:pos", "g"))["pending"] == 1
        await user.give_back("zadd")
        assert await stream.write(writer, [(late, "late")], acks) == [True]
        assert await admin.xlen(stream.stream) == 1
        assert (await admin.xpending("t:{in}:pos", "g"))["pending"] == 0
    finally:
        await writer.aclose()


async def test_a_snapshot_in_parts_whose_persist_the_acl_took_away_leaves_the_stored_one_in_place_R7(
        user: AclUser) -> None:
    """The last part's script renamed the staging keys (a time to live on each, ``STAGING_TTL_MS``) over the stored
    snapshot, then its PERSIST was refused: the new snapshot in place, gone ten minutes later, the old one
    overwritten and the log trimmed behind it — a restart then had neither (R7). Refused whole now: the stored
    snapshot stands, persistent."""
    admin = user.admin
    part = 64 << 10
    async with _log_of_three_entries(user) as store:
        old = os.urandom(part // 2)
        await store.write_snapshot(0, 1, old, part_bytes=part)
        await user.take_away("persist")
        with pytest.raises(RedisError, match=r"DENIED PERSIST"):
            await store.write_snapshot(0, 2, os.urandom(3 * part), part_bytes=part)
        assert await admin.get("t:{g0}:snap") == sealed_snapshot(old)  # was: the new one, expiring
        assert await admin.pttl("t:{g0}:snap") == -1
        assert len(await admin.xrange("t:{g0}:log")) == 3


async def test_a_whole_snapshot_whose_del_the_acl_took_away_leaves_the_stored_pieces_as_they_were_R7(
        user: AclUser) -> None:
    """A snapshot in one key over one stored in several: its SET landed, the DEL of the old pieces and of their
    count refused — the new snapshot read with the old one's later pieces after it, a snapshot of neither (R7).
    Refused whole now: the stored pieces stand."""
    admin = user.admin
    piece = 64 << 10
    async with _log_of_three_entries(user) as store:
        old = os.urandom(2 * piece)
        await store.write_snapshot(0, 1, old, piece_bytes=piece)
        stored = [await admin.get(key) for key in ("t:{g0}:snap", "t:{g0}:snap:1", "t:{g0}:snap:2")]
        assert b"".join(stored) == sealed_snapshot(old)  # three pieces
        await user.take_away("del")
        with pytest.raises(RedisError, match=r"DENIED DEL"):
            await store.write_snapshot(0, 2, os.urandom(piece // 2), piece_bytes=piece)
        assert [await admin.get(key) for key in ("t:{g0}:snap", "t:{g0}:snap:1", "t:{g0}:snap:2")] == stored



async def test_a_whole_snapshot_whose_delete_of_a_later_piece_the_acl_took_away_leaves_the_stored_one_R7(
        user: AclUser) -> None:
    """The ACL asked of the DEL on ``snap-pieces`` only, not on the old snapshot's later pieces (``snap:<piece>``:
    keys of their own, which an ACL selector, ``(+del ~…)``, allows apart): the SET of the new snapshot over the first
    piece landed, the DEL of the next refused — read back as the new snapshot with the old one's later pieces, failing
    its checksum, the log trimmed behind the old one (R7). Refused whole now: the stored pieces stand."""
    admin = user.admin
    piece = 64 << 10
    async with _log_of_three_entries(user) as store:
        await store.write_snapshot(0, 1, os.urandom(2 * piece), piece_bytes=piece)
        stored = [await admin.get(key) for key in ("t:{g0}:snap", "t:{g0}:snap:1", "t:{g0}:snap:2")]
        await user.allow_only_on("del", "t:{g0}:snap-pieces", "t:{g0}:snap-parts*")
        with pytest.raises(RedisError, match=r"DENIED DEL on t:\{g0\}:snap:1"):
            await store.write_snapshot(0, 2, os.urandom(piece // 2), piece_bytes=piece)
        assert [await admin.get(key) for key in ("t:{g0}:snap", "t:{g0}:snap:1", "t:{g0}:snap:2")] == stored


async def test_a_snapshot_in_parts_whose_rename_of_a_later_piece_the_acl_took_away_leaves_the_stored_one_R7(
        user: AclUser) -> None:
    """The last part's script asked of the ACL for its first piece's RENAME and PERSIST only: RENAME allowed on that
    piece's keys alone (a selector), a later piece's failed after the first had landed over the stored snapshot — read
    back as the first piece alone (no count of pieces written), the old snapshot gone and the log trimmed behind it
    (R7). Refused whole now: the stored snapshot stands, the staging keys left to expire."""
    admin = user.admin
    piece = 64 << 10
    async with _log_of_three_entries(user) as store:
        old = os.urandom(piece // 2)
        await store.write_snapshot(0, 1, old)
        await user.allow_only_on("rename", "t:{g0}:snap-parts", "t:{g0}:snap")
        with pytest.raises(RedisError, match=r"DENIED RENAME on t:\{g0\}:snap-parts:1"):
            await store.write_snapshot(0, 2, os.urandom(2 * piece), part_bytes=piece, piece_bytes=piece)
        assert await admin.get("t:{g0}:snap") == sealed_snapshot(old)  # was: the new snapshot's first piece
        assert await admin.pttl("t:{g0}:snap") == -1
        assert not await admin.exists("t:{g0}:snap:1", "t:{g0}:snap-pieces")
