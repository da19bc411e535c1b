"""Scripts that take fields out of a hash one by one, on a Redis Cluster slot being migrated: the source node runs a
script only where every key it names is there, and fails each command of it on a key gone since it began ("a non local
key", half-way). A script that empties its hash part-way stops there, and touches it no more."""

from __future__ import annotations

import redis

from atp_service.intake.unread import _ACK, trimmed_unread_key
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.slot_moves import SlotMove


def _migrating(cluster: EmbeddedCluster, key: str, moves: list[SlotMove]) -> None:
    """``key``'s slot begun to move to another primary, every key still at its source."""
    with redis.RedisCluster.from_url(cluster.url) as admin:
        slot, source = admin.keyslot(key), int(admin.get_node_from_key(key).port)
    moves.append(move := SlotMove(cluster, slot, source, next(n.port for n in cluster.primaries if n.port != source)))
    move.begin()


async def test_keys_forgotten_from_the_restamp_hash_that_empty_it_part_way_raise_nothing_while_its_slot_migrates(
        redis_cluster: EmbeddedCluster, cluster_url: str, moves: list[SlotMove]) -> None:
    """A key named twice in what the desk forgets (an HSCAN may return a field twice) or forgotten meanwhile: the
    hash emptied before the last, the next HGET failed the script — the channel counted as its restamp hash unread
    (``atp_channel_restamps_unread_total``, a warning) though every key was forgotten."""
    store = ChannelStore.open(cluster_url, "t:", lambda: "1", 5.0, True, (0, 0))
    key = store.keys.channel_restamp("web")
    try:
        await store.client.hset(key, mapping={"A\tDC": 5, "B\tDC": 7})
        _migrating(redis_cluster, key, moves)
        done = [part for _, _, field, value in await store.restamps("web") for part in (field, value)]
        await store.forget_restamps("web", done + done[:2])  # was: a non local key
        assert not await store.client.exists(key)
    finally:
        await store.aclose()


async def test_an_unread_count_told_twice_that_empties_the_owed_hash_part_way_raises_nothing_while_its_slot_migrates(
        redis_cluster: EmbeddedCluster, cluster_url: str, moves: list[SlotMove]) -> None:
    """Two reads of one consumer told the same owed counts (a stop's forget still on its way), the second forget
    naming a stream the first took out: the hash emptied before it, its HINCRBY failed the script — the read's reply,
    its entries delivered, dropped with it (left pending until claimed)."""
    client = redis.asyncio.RedisCluster.from_url(cluster_url)
    owed = trimmed_unread_key("t:{in}:a", "g", "c1")
    try:
        await client.hset(owed, mapping={"t:{in}:a": 2, "t:{in}:a\n": "1-0"})  # b's told and forgotten already
        _migrating(redis_cluster, owed, moves)
        await client.register_script(_ACK)(keys=[owed], args=["t:{in}:a", 2, "t:{in}:b", 1])  # was: a non local key
        assert not await client.exists(owed)
    finally:
        await client.aclose()
