"""Two claims that drew the same number are still two epochs (R7, E10): Redis back from older data
forgets the latest claim, and the next claimant may draw that claim's number again (both in one
millisecond, or numbers drawn ahead of the clocks — a claimant's clock ahead, ``top + 1`` chains).
The owner key holds the number with the claim's own identity, and every write script compares the
whole value: the forgotten claim's instance, still running, is refused at its next write instead of
writing as the new owner. Real Redis, a real Redis Cluster."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from atp_service.storage import leases as leases_module
from atp_service.storage import log as log_module
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.keys import CHANNELS
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import Fenced, LogStore, connect
from atp_service.storage.nodes import Call, Script, open_nodes
from atp_service.storage.records import number_of as parsed_number
from atp_service.storage.scripts import CLAIM_ORDER_LUA
from tests.atp_service.app.test_redis_lost_tail import Image, restored, saved
from tests.sim.simlog import outranks

SHARDS = 4


def number_of(epoch: object) -> int:
    """The number drawn for a claim (its epoch: ``<number>:<identity>``)."""
    return int(str(epoch).partition(":")[0])


def clocks_ahead(monkeypatch: pytest.MonkeyPatch) -> int:
    """Every claimant's clock an hour ahead, reading the same millisecond: the number each claim draws
    (``DRAW_LUA``: the highest of top + 1, Redis's time, the claimant's clock) is that one."""
    ahead = int(time.time() * 1000) + 3_600_000
    monkeypatch.setattr(log_module, "wall_ms", lambda: ahead)
    monkeypatch.setattr(leases_module, "wall_ms", lambda: ahead)
    return ahead


async def saved_all(primaries: list[aioredis.Redis]) -> list[Image]:
    return [await saved(primary) for primary in primaries]


async def restored_all(primaries: list[aioredis.Redis], images: list[Image]) -> None:
    """Every node back from its older data (an older AOF or RDB, lagging replicas promoted)."""
    for primary, image in zip(primaries, images, strict=True):
        await restored(primary, image)


@pytest.fixture
async def primaries(redis_cluster: EmbeddedCluster, cluster_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    """A client per primary of the (flushed) cluster, to save and restore its data."""
    clients = [aioredis.Redis(host="127.0.0.1", port=node.port) for node in redis_cluster.primaries]
    yield clients
    for client in clients:
        await client.aclose()


async def test_a_claim_redis_forgot_drawn_again_leaves_its_instance_fenced(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: instance A claimed the keyspace; Redis came back from data older than A's claim (its
    owner keys and the claimants' set gone back), and instance B's claim drew A's number again (their
    clocks ahead, in one millisecond). The owner keys held that number alone, so A — still running —
    passed every write's owner check: two writers for every shard, one epoch, until A's owner check
    found a log entry it never sent. B's claim is now another epoch than A's: A's writes are refused."""
    drawn = clocks_ahead(monkeypatch)
    client = connect(redis_url, 5.0)
    raw = aioredis.Redis.from_url(redis_url)
    a, b = (LogStore(client, "t:", pipeline_max=64) for _ in range(2))
    try:
        image = await saved(raw)
        assert await a.claim(SHARDS) == drawn
        await restored(raw, image, at_once=True)
        assert await b.claim(SHARDS) == drawn  # the same number: only the claim's identity tells them apart
        with pytest.raises(Fenced):
            await a.submit(0, 1, b"A, whose claim Redis forgot")
        assert not await a.still_owner() and not a.claim_lost  # a newer claim owns it: A is replaced (exit 3)
        await b.submit(0, 1, b"B owns the keyspace")
        await b.submit_group([(1, 1, b"B's"), (2, 1, b"writes")])
        assert [d async for _, d in b.entries_after(0, 0)] == [b"B owns the keyspace"]
        assert await b.still_owner()
    finally:
        await raw.aclose()
        await client.aclose()


async def test_a_cluster_claim_redis_forgot_drawn_again_leaves_its_instance_fenced(
        cluster_url: str, primaries: list[aioredis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: as on one Redis, on a Cluster (``EPOCH_SCRIPT`` draws, then ``CLAIM_AT_SCRIPT`` takes
    each group): every primary back from data older than A's claim (the claims key and the owner keys
    with it), B drew A's number again and took each group with it; A's writes landed as B's."""
    drawn = clocks_ahead(monkeypatch)
    a, b = (LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64) for _ in range(2))
    try:
        images = await saved_all(primaries)
        assert await a.claim(SHARDS) == drawn
        await restored_all(primaries, images)
        assert await b.claim(SHARDS) == drawn
        for shard in (0, SHARDS - 1):
            with pytest.raises(Fenced):
                await a.submit(shard, 1, b"A, whose claim Redis forgot")
        assert not await a.still_owner()
        for shard in range(SHARDS):
            await b.submit(shard, 1, b"B owns every group")
        assert await b.still_owner()
    finally:
        await a.nodes.aclose()
        await b.nodes.aclose()


async def test_a_taking_redis_forgot_drawn_again_leaves_its_process_fenced(
        cluster_url: str, primaries: list[aioredis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: leased groups (``ownership = leases``). Process A took group 2; the cluster came back from
    older data (the lease, the owner key and the claims key gone back); process B took the free group,
    drawing A's number again. A, serving the group until its next renewal, wrote under B's epoch and
    its entries landed. Each taking now has a nonce of its own in the owner key: A's write is refused."""
    drawn = clocks_ahead(monkeypatch)
    stores = [LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64) for _ in range(2)]
    for store in stores:
        store.leased = True
    a, b = GroupLeases(stores[0], "process-a", 60_000), GroupLeases(stores[1], "process-b", 60_000)
    try:
        images = await saved_all(primaries)
        assert await a.acquire(2)
        await restored_all(primaries, images)
        assert await b.acquire(2)  # A's lease went with the data: the group is free
        assert number_of(b.held[2]) == number_of(a.held[2]) == drawn
        with pytest.raises(Fenced):
            await stores[0].submit(2, 1, b"A, whose taking Redis forgot")
        assert 2 in stores[0].lost and not await stores[0].still_owner(2)
        await stores[1].submit(2, 1, b"B owns the group")
        assert await stores[1].still_owner(2)
    finally:
        for store in stores:
            await store.nodes.aclose()


async def test_claims_drawing_one_number_on_the_cluster_settle_on_one_owner_whatever_the_order(
        cluster_url: str) -> None:
    """Two claims that drew the same number take the groups (``CLAIM_AT_SCRIPT``), their calls reaching
    the primaries in different orders: every group ends up the same claim's (ranked by identity), the
    other refused FENCED where it comes second — never each owning a part of the groups."""
    store = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64)
    try:
        low, high = "1700000000000:0123456789abcdef", "1700000000000:f123456789abcdef"
        for group, order in ((0, (low, high)), (1, (high, low)), (CHANNELS, (low, high))):
            keys = [store.keys.owner(group), store.keys.fence(group)]
            replies = await store.nodes.run([Call(LogStore._CLAIM_AT, keys, [epoch]) for epoch in order])
            assert (await store.client.get(store.keys.owner(group))).decode() == high
            assert isinstance(replies[order.index(low)], Exception) == (order[0] == high)
    finally:
        await store.nodes.aclose()


async def test_a_new_instance_claims_over_a_previous_releases_owner_keys_and_fences_its_instance(
        redis_url: str) -> None:
    """Upgrade: the owner keys hold the number alone (written by the previous release), whose running
    instance writes with that number. A new instance's claim rises above it; the old instance's writes
    are refused from then on, and its own check of the owner keys finds it replaced."""
    client = connect(redis_url, 5.0)
    old_number = int(time.time() * 1000)
    older = LogStore(client, "t:", pipeline_max=64)
    older.epochs = {g: str(old_number) for g in [*range(SHARDS), CHANNELS]}  # what the old release's writes carry
    try:
        for group in older.epochs:
            await client.set(older.keys.owner(group), old_number)
        await older.submit(0, 1, b"the previous release's instance")
        newer = LogStore(client, "t:", pipeline_max=64)
        assert await newer.claim(SHARDS) > old_number
        with pytest.raises(Fenced):
            await older.submit(0, 2, b"refused")
        assert not await older.still_owner() and not older.claim_lost
        await newer.submit(0, 2, b"the new release's instance")
        assert [d async for _, d in newer.entries_after(0, 0)] == [b"the previous release's instance",
                                                                   b"the new release's instance"]
    finally:
        await client.aclose()


async def test_a_cluster_claim_over_a_previous_releases_owner_keys_takes_every_group(cluster_url: str) -> None:
    """Upgrade on a Cluster: an owner key of the previous release (the number alone) is outranked by a
    claim of this one, even one that drew that very number (``CLAIM_AT_SCRIPT``)."""
    store = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64)
    try:
        await store.client.set(store.keys.owner(0), 1700000000000)
        keys = [store.keys.owner(0), store.keys.fence(0)]
        await store.nodes.run_one(Call(LogStore._CLAIM_AT, keys, ["1700000000000:0000000000000000"]))
        assert (await store.client.get(store.keys.owner(0))).decode() == "1700000000000:0000000000000000"
        assert await store.claim(SHARDS) > 1700000000000
        await store.submit(0, 1, b"the new release owns every group")
    finally:
        await store.nodes.aclose()


# ARGV: two owner-key values ("": a missing key, which GET answers false). Returns whether the first
# outranks the second, and the first's number.
_ORDER = Script(CLAIM_ORDER_LUA + """
local a, b = ARGV[1] ~= '' and ARGV[1] or false, ARGV[2] ~= '' and ARGV[2] or false
return {outranks(a, b) and 1 or 0, number_of(a)}
""")


async def test_the_simulation_and_the_service_rank_claims_as_the_scripts_do(store: LogStore) -> None:
    """The simulation's ``outranks`` and the service's ``number_of`` against ``CLAIM_ORDER_LUA`` in a
    real Redis: numbers first, then the value byte by byte (a prefix below its extensions: a previous
    release's number-only key below any claim of that number), a missing key below everything. A
    simulation ranking otherwise would check takings the service never makes."""
    values = ["", "7", "17", "1700000000000", "1700000000000:0123456789abcdef", "1700000000000:f123456789abcdef",
              "1700000000000:f12", "1700000000000:\u00e9", "1700000000001", "1700000000001:00", "99999999999999:a"]
    for a, b in itertools.product(values, repeat=2):
        ranked, number = await store.nodes.run_one(Call(_ORDER, [store.keys.owner(0)], [a, b]))
        assert (bool(ranked), number) == (outranks(a, b), parsed_number(a)), (a, b)
