"""The log on a real Redis Cluster: every script call within one group's slot, a group commit
pipelined per primary, claims and fences per group, and acknowledgement after ``WAIT``."""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from atp_service.storage.durability import landed_of
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import CrossGroupWrite, Fenced, LogStore, encode_snapshot
from atp_service.storage.nodes import NotReplicated, open_nodes
from reservation import Ledger, Limits
from tests.waiting import until

SHARDS = 8


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[LogStore]:
    """A log store on the cluster that has claimed a clean keyspace of ``SHARDS`` groups."""
    log_store = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64)
    await log_store.claim(SHARDS)
    yield log_store
    await log_store.nodes.aclose()


async def test_a_group_commit_over_every_shard_lands_on_the_primaries_that_own_them(store: LogStore) -> None:
    owners = {store.client.get_node_from_key(store.keys.log(shard)).name for shard in range(SHARDS)}
    assert len(owners) >= 2, "the groups are spread over the primaries"
    for seq in (1, 2):
        futures = [store.submit(shard, seq, f"{shard}/{seq}".encode()) for shard in range(SHARDS)]
        for future in futures:
            await future
    for shard in range(SHARDS):
        assert [data async for _, data in store.entries_after(shard, 0)] == [f"{shard}/1".encode(),
                                                                             f"{shard}/2".encode()]
    with pytest.raises(RedisError, match="TAKEN"):
        await store.submit(3, 2, b"again")  # each group's checks hold within its own call
    with pytest.raises(RedisError, match="GAP"):
        await store.submit(4, 9, b"a hole")
    await store.submit(5, 3, b"other groups of the flush land")


async def test_a_shard_s_entries_past_a_full_commit_wait_for_it_and_others_go_meanwhile(cluster_url: str) -> None:
    """A commit holds ``pipeline_max`` entries: a shard's entries past it go in its next commit, never
    beside it (two commits of one shard in flight could land out of order), and other shards' entries
    go at once in a commit of their own."""
    store = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=2)
    try:
        await store.claim(SHARDS)
        futures = [store.submit(0, seq, b"%d" % seq) for seq in (1, 2, 3)] + [store.submit(1, 1, b"other")]
        await asyncio.gather(*futures)
        assert [seq async for seq, _ in store.entries_after(0, 0)] == [1, 2, 3]
        assert await store.last_seq(1) == 1
    finally:
        await store.nodes.aclose()


async def test_a_commit_abandoned_before_it_was_sent_answers_its_entries_and_frees_its_shard(store: LogStore) -> None:
    """A group commit's task cancelled before it ran (the loop shutting down, say) sent nothing: its
    entries are answered all the same (in doubt, R7), and their shard's commit slot is free again —
    else every later entry of that shard waited for ever (liveness)."""
    entry = store.submit(0, 1, b"never sent")
    await asyncio.sleep(0)  # the flush runs next: it takes the entry into a commit, whose task has not run yet
    (commit,) = store._tasks
    assert not store.unsent(entry) and inspect.getcoroutinestate(commit.get_coro()) == inspect.CORO_CREATED
    commit.cancel()
    await asyncio.wait([commit])
    assert entry.done(), "an entry of a commit cancelled before it ran was never answered"
    with pytest.raises(RedisError):
        entry.result()
    assert await store.last_seq(0) == 0  # nothing was sent
    later = store.submit(0, 1, b"the shard goes on")
    await asyncio.sleep(0)
    assert not store.unsent(later), "the shard's commit slot stayed taken: its later entries never go"
    await later
    assert [data async for _, data in store.entries_after(0, 0)] == [b"the shard goes on"]


async def test_entries_of_several_groups_cannot_be_made_to_land_all_or_none(store: LogStore) -> None:
    with pytest.raises(CrossGroupWrite, match="shards"):
        store.submit_group([(0, 1, b"a"), (1, 1, b"b")])
    await store.submit_group([(2, 1, b"one shard's group is one slot")])
    assert await store.last_seq(2) == 1 and await store.last_seq(0) == 0
    assert await store.last_seqs([0, 2, 5]) == [0, 1, 0]  # one pipeline over the groups' nodes


async def test_a_newer_claim_fences_every_group_of_the_older_owner(store: LogStore) -> None:
    await store.submit(0, 1, b"before")
    newer = LogStore(open_nodes(store.nodes._url, 5.0, cluster=True), "t:", pipeline_max=64)
    try:
        assert await newer.claim(SHARDS) > 0
        for shard in (0, 6):
            with pytest.raises(Fenced):
                await store.submit(shard, 1 if shard else 2, b"refused")
        assert not await store.still_owner()
        await newer.submit(0, 2, b"after")
        assert [d async for _, d in newer.entries_after(0, 0)] == [b"before", b"after"]
        assert await newer.still_owner()
    finally:
        await newer.nodes.aclose()


async def test_a_fence_refuses_the_late_write_and_a_settle_reads_what_landed(store: LogStore) -> None:
    await store.submit(1, 1, b"one")
    late = LogStore(open_nodes(store.nodes._url, 5.0, cluster=True), "t:", pipeline_max=64)
    late.epochs, late._tokens = dict(store.epochs), dict(store._tokens)  # a script still on its way
    try:
        await store.fence(1)
        with pytest.raises(RedisError, match="STALE"):
            await late.submit(1, 2, b"late")
        assert await landed_of(store, 1, 1, []) == []  # nothing after entry 1 landed, nor can now
    finally:
        await late.nodes.aclose()


async def test_a_snapshot_trims_its_group_and_recovery_reads_it_back(store: LogStore) -> None:
    for seq in range(1, 4):
        await store.submit(7, seq, b"x")
    # In parts of 16 bytes, spread over keys of 32: every key of the group in its slot, moved in one script.
    await store.write_snapshot(7, 2, encode_snapshot(2, Ledger(7, Limits()).snapshot()), part_bytes=16, piece_bytes=32)
    assert int(await store.client.get(store.keys.snap_pieces(7))) > 2
    snap = await store.load_snapshot(7)
    assert snap is not None and snap.seq == 2
    assert [seq async for seq, _ in store.entries_after(7, snap.seq)] == [3]  # what recovery replays
    assert await store.client.xlen(store.keys.log(7)) == 2  # trimmed up to the snapshot's own entry


async def test_an_append_is_acknowledged_after_a_replica_confirms_it(redis_cluster: EmbeddedCluster,
                                                                     cluster_url: str) -> None:
    """The group's replica is held (SIGSTOP): the append lands on the primary and waits there in ``WAIT``,
    unacknowledged; once the replica runs again it confirms the entry and the append is acknowledged. The
    ``WAIT`` is given far longer than any host's stall, so neither outcome depends on timing."""
    store = LogStore(open_nodes(cluster_url, 5.0, cluster=True, wait_replicas=1, wait_timeout_ms=120_000), "t:",
                     pipeline_max=64)
    try:
        await store.claim(SHARDS)
        await store.submit(0, 1, b"the group's script loaded on its primary")  # (not a NOSCRIPT's WAIT below)
        primary = store.client.get_node_from_key(store.keys.log(0))
        with redis.Redis(host=primary.host, port=primary.port) as on_primary:
            (held,) = [node for node in redis_cluster.nodes
                       if node.port in _replica_ports(on_primary.info("replication"))]
            assert held.process is not None
            held.process.send_signal(signal.SIGSTOP)
            try:
                append = asyncio.ensure_future(store.submit(0, 2, b"on a primary and its replica"))
                await until(lambda: append.done() or (on_primary.xlen(store.keys.log(0)) == 2
                                                      and _waiting_in_wait(on_primary)),
                            "the append landed on the primary and waiting there in WAIT")
                assert not append.done(), "acknowledged while its only replica could not have confirmed it"
            finally:
                held.process.send_signal(signal.SIGCONT)
            await append  # confirmed by the replica: acknowledged (NotReplicated had it not)
        await store.fence(0)
    finally:
        await store.nodes.aclose()


def _replica_ports(replication: dict[str, Any]) -> set[int]:
    """The ports of the replicas a primary's ``INFO replication`` lists (``slave0``: a dict redis-py parsed)."""
    return {int(value["port"]) for key, value in replication.items() if key.startswith("slave") and
            isinstance(value, dict)}


def _waiting_in_wait(client: redis.Redis) -> bool:
    """A client of this node is blocked in ``WAIT``."""
    return any(c.get("cmd") == "wait" and "b" in c.get("flags", "") for c in client.client_list())


async def test_an_append_fewer_replicas_confirm_than_asked_is_in_doubt_not_refused(cluster_url: str) -> None:
    nodes = open_nodes(cluster_url, 5.0, cluster=True, wait_timeout_ms=50)
    store = LogStore(nodes, "t:", pipeline_max=64)
    try:
        await store.claim(SHARDS)
        nodes.wait_replicas = 2  # each primary has one replica
        with pytest.raises(NotReplicated, match="1 of 2"):
            await store.submit(0, 1, b"on the primary only")
        assert await store.last_seq(0) == 1  # it landed on the primary: in doubt, as a timeout would be
    finally:
        await nodes.aclose()


async def test_two_instances_claiming_at_once_leave_one_owner_of_every_group(cluster_url: str) -> None:
    """A cluster cannot claim every group in one script: two instances starting together each took
    some groups, and each was then fenced by the other — no instance left (both exit 3, and neither
    may be restarted). The claim with the highest epoch now takes every group, whatever the order
    its calls and the other's reach the primaries in."""
    for attempt in range(12):
        prefix = f"c{attempt}:"
        one = LogStore(open_nodes(cluster_url, 5.0, cluster=True), prefix, pipeline_max=64)
        two = LogStore(open_nodes(cluster_url, 5.0, cluster=True), prefix, pipeline_max=64)
        try:
            await asyncio.gather(one.nodes.reader.initialize(), two.nodes.reader.initialize())
            claims = await asyncio.gather(one.claim(SHARDS), two.claim(SHARDS), return_exceptions=True)
            assert not all(isinstance(c, BaseException) for c in claims), claims
            owning = [await store.still_owner() for store in (one, two)]
            assert sorted(owning) == [False, True], f"attempt {attempt}: owners {owning}, claims {claims}"
            winner = (one, two)[owning.index(True)]
            await winner.submit(0, 1, b"the winner writes every group")
            await winner.submit(SHARDS - 1, 1, b"the winner writes every group")
        finally:
            await one.nodes.aclose()
            await two.nodes.aclose()


async def test_a_node_that_lost_its_scripts_runs_them_again_and_only_what_did_not_run(store: LogStore) -> None:
    await store.submit(0, 1, b"one")
    # As a restart, or a failover to a replica that never ran them, leaves a node:
    for node in store.client.get_primaries():
        async with aioredis.Redis(host=node.host, port=node.port) as direct:
            await direct.script_flush()
    futures = [store.submit(shard, 1 if shard else 2, b"after the flush") for shard in range(SHARDS)]
    for future in futures:
        await future  # loaded again and sent once: none refused as TAKEN, none in doubt
    assert [d async for _, d in store.entries_after(0, 0)] == [b"one", b"after the flush"]


async def test_each_entry_of_a_flush_over_the_primaries_gets_its_own_outcome(store: LogStore) -> None:
    """One flush, one pipeline per primary, entries that land and entries that are refused mixed on
    each primary: every caller is told what happened to its own entry, never to another's."""
    for shard in range(SHARDS):
        await store.submit(shard, 1, b"first")
    by_node: dict[str, list[int]] = {}
    for shard in range(SHARDS):
        by_node.setdefault(store.client.get_node_from_key(store.keys.log(shard)).name, []).append(shard)
    assert max(len(shards) for shards in by_node.values()) >= 2, "some primary serves several groups"
    refused = {shards[0] for shards in by_node.values()}  # the first call of each primary's pipeline
    futures = {shard: store.submit(shard, 9 if shard in refused else 2, f"{shard}/2".encode())
               for shard in range(SHARDS)}
    outcomes = await asyncio.gather(*futures.values(), return_exceptions=True)
    for shard, outcome in zip(futures, outcomes, strict=True):
        if shard in refused:
            assert isinstance(outcome, RedisError) and "GAP" in str(outcome), (shard, outcome)
            assert await store.last_seq(shard) == 1
        else:
            assert outcome is None, (shard, outcome)
            assert [d async for _, d in store.entries_after(shard, 1)] == [f"{shard}/2".encode()]


async def test_a_claim_older_than_the_one_holding_a_group_is_refused_there(cluster_url: str) -> None:
    """Two instances claiming at once, their calls interleaved at the primaries: the older claim
    (its epoch drawn first) reaches group 0 after the newer took it, and the other groups before.
    The newer claim ends owning every group: the older is refused where the newer got first, and
    overwritten elsewhere — never one owner of group 0 and another of the rest."""
    older = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "r:", pipeline_max=64)
    newer = LogStore(open_nodes(cluster_url, 5.0, cluster=True), "r:", pipeline_max=64)
    older_drew, newer_took_group_0, older_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    older_run, newer_run = older.nodes.run, newer.nodes.run

    async def older_calls(calls: list[Any], extra_s: float = 0.0) -> list[Any]:
        if calls and calls[0].script is LogStore._CLAIM_AT:
            older_drew.set()
            await newer_took_group_0.wait()
            try:
                return await older_run(calls, extra_s)
            finally:
                older_done.set()
        return await older_run(calls, extra_s)

    async def newer_calls(calls: list[Any], extra_s: float = 0.0) -> list[Any]:
        if calls and calls[0].script is LogStore._CLAIM_AT:
            first = await newer_run(calls[:1], extra_s)  # group 0
            newer_took_group_0.set()
            await older_done.wait()
            return first + await newer_run(calls[1:], extra_s)
        return await newer_run(calls, extra_s)

    older.nodes.run, newer.nodes.run = older_calls, newer_calls  # type: ignore[method-assign]
    try:
        claiming = asyncio.ensure_future(older.claim(SHARDS))
        await older_drew.wait()
        await newer.claim(SHARDS)
        with pytest.raises(Fenced):
            await claiming
        assert await newer.still_owner() and not await older.still_owner()
        for shard in (0, SHARDS - 1):
            await newer.submit(shard, 1, b"the newer claim writes every group")
    finally:
        await older.nodes.aclose()
        await newer.nodes.aclose()


async def test_a_claim_on_the_cluster_rises_above_the_last_even_when_the_clock_went_back(store: LogStore) -> None:
    """The claims key and the owner keys hold an epoch drawn when a clock was days ahead: the next claim
    (no lower than the time now, ``scripts.DRAW_LUA``) is still above it, by one."""
    ahead = store.epoch + 10 ** 9
    await store.client.set(store.keys.claims, ahead)
    newer = LogStore(open_nodes(store.nodes._url, 5.0, cluster=True), "t:", pipeline_max=64)
    try:
        assert await newer.claim(SHARDS) == ahead + 1
        assert not await store.still_owner()
    finally:
        await newer.nodes.aclose()
