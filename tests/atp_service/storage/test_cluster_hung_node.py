"""A Redis Cluster primary that hangs (stopped, or cut off from the service alone: the kernel still
takes connections and bytes, nothing answers) while the other primaries serve: only the groups of
the hung node are affected. A write that met it marks the slot map for reading again, and so does a
read through the cluster client; that read of the map asks the cluster's nodes one by one, in an
order of redis-py's choosing, and waits the socket timeout on the hung one. Writes to the nodes that
answer must not wait for it — nor fail with it: a group commit to a node that answers went out
only after a read of the map that met the hung node first, and failed unsent when no other node
answered that read in its place, leaving healthy shards in doubt for as long as the node hung.

The cluster client here knows the cluster through the hung node alone (no dynamic startup nodes, and
no node learned from ``CLUSTER NODES``, as for a user the ACL denies it): what every read of the map
meets when redis-py happens to ask the hung node first (one in as many nodes as the cluster has, at
each read), made certain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from atp_service.storage.durability import STORAGE_ERRORS, landed_of
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Nodes
from tests.waiting import until

SHARDS = 8
TIMEOUT_S = 1.0
PATIENT_TIMEOUT_S = 15.0


@pytest.fixture
async def store(cluster: EmbeddedCluster) -> AsyncIterator[LogStore]:
    async with _store_on(cluster, TIMEOUT_S) as log_store:
        yield log_store


@pytest.fixture
async def patient_store(cluster: EmbeddedCluster) -> AsyncIterator[LogStore]:
    """A store whose socket timeout no write to a node that answers comes near: while the hung node
    is stopped, a write to it can end only by that timeout, so one still waiting is one not answered."""
    async with _store_on(cluster, PATIENT_TIMEOUT_S) as log_store:
        yield log_store


class _LearningNothing(Nodes):
    """A writer whose ``CLUSTER NODES`` is refused (best effort: it learns no node)."""

    async def _learn_nodes(self) -> None:
        return None


@contextlib.asynccontextmanager
async def _store_on(cluster: EmbeddedCluster, timeout_s: float) -> AsyncIterator[LogStore]:
    seed = cluster.primaries[0]
    reader = aioredis.RedisCluster(host="127.0.0.1", port=seed.port, dynamic_startup_nodes=False,
                                   socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   retry=Retry(NoBackoff(), 0))
    writer = _LearningNothing(reader, cluster=True, url=seed.url, timeout_s=timeout_s)
    log_store = LogStore(writer, "t:", pipeline_max=64)
    try:
        await log_store.claim(SHARDS)
        yield log_store
    finally:
        await log_store.nodes.aclose()


@contextlib.contextmanager
def _one_hung(cluster: EmbeddedCluster, store: LogStore) -> Iterator[tuple[int, int]]:
    """A primary stopped (SIGSTOP) meanwhile, and continued after: a shard whose group it serves, and
    one served elsewhere."""
    hung = cluster.primaries[0]
    assert hung.process is not None
    ports = {shard: int(store.client.get_node_from_key(store.keys.log(shard)).port) for shard in range(SHARDS)}
    behind = next(s for s in range(SHARDS) if ports[s] == hung.port)
    elsewhere = next(s for s in range(SHARDS) if ports[s] != hung.port)
    os.kill(hung.process.pid, signal.SIGSTOP)
    try:
        yield behind, elsewhere
    finally:
        os.kill(hung.process.pid, signal.SIGCONT)


async def _goes_on(store: LogStore, shard: int, seq: int, data: bytes) -> None:
    """Once the hung node answers again: its shard's write in doubt settled, and the shard writes on."""
    landed = await landed_of(store, shard, seq - 1, [(seq, Any, data)])  # type: ignore[list-item]
    assert landed is not None
    await store.submit(shard, seq + 1 if landed else seq, b"the hung node's shard goes on")


async def test_a_write_meeting_a_hung_primary_holds_no_write_to_the_others(cluster: EmbeddedCluster,
                                                                          store: LogStore) -> None:
    with _one_hung(cluster, store) as (behind, elsewhere):
        with pytest.raises(STORAGE_ERRORS):
            await store.submit(behind, 1, b"to the hung node")  # no answer: the slot map is read again
        await store.submit(elsewhere, 1, b"to a node that answers")
        await store.submit(elsewhere, 2, b"and again")
    await _goes_on(store, behind, 1, b"to the hung node")


async def test_a_read_meeting_a_hung_primary_holds_no_write_to_the_others(cluster: EmbeddedCluster,
                                                                         store: LogStore) -> None:
    with _one_hung(cluster, store) as (behind, elsewhere):
        with pytest.raises(STORAGE_ERRORS):
            await store.last_seq(behind)  # the cluster client's own read: it reads the slot map again
        await store.submit(elsewhere, 1, b"to a node that answers")
    await store.submit(behind, 1, b"the hung node's shard goes on")


async def _settled(store: LogStore, shard: int, seq: int, data: bytes, write: asyncio.Future[None]) -> None:
    """``write`` (entry ``seq`` of ``shard``) ended once the hung node runs again: durable, or in doubt and
    settled (``_goes_on``); the shard writes on either way."""
    try:
        await write
    except STORAGE_ERRORS:
        await _goes_on(store, shard, seq, data)
    else:
        await store.submit(shard, seq + 1, b"the hung node's shard goes on")


async def test_a_group_commit_over_a_hung_primary_answers_the_others_first(cluster: EmbeddedCluster,
                                                                          patient_store: LogStore) -> None:
    """Shards on a node that answers and one on the hung node, in one group commit: each is answered
    as its own node answers, not once every node has (liveness: every shard answers)."""
    store = patient_store
    with _one_hung(cluster, store) as (behind, elsewhere):
        stuck = store.submit(behind, 1, b"to the hung node")
        await store.submit(elsewhere, 1, b"to a node that answers, in the same group commit")
        assert not stuck.done(), "the write to the node that answers waited for the hung node"
    await _settled(store, behind, 1, b"to the hung node", stuck)


async def test_a_commit_in_flight_to_a_hung_primary_holds_no_later_commit_of_another(cluster: EmbeddedCluster,
                                                                                   patient_store: LogStore) -> None:
    """A commit to the hung node is in flight; entries of shards elsewhere submitted after it go in
    commits of their own, answered while it waits. A later entry of the hung node's shard is not sent
    meanwhile: two commits of one shard are never in flight at once (a later one landing first would
    be refused, GAP)."""
    store = patient_store
    with _one_hung(cluster, store) as (behind, elsewhere):
        stuck = store.submit(behind, 1, b"to the hung node")
        await until(lambda: not store.unsent(stuck), "the hung node's commit sent")
        after = store.submit(behind, 2, b"waits for the commit before it")
        for seq in (1, 2):
            await store.submit(elsewhere, seq, b"to a node that answers")
            assert not stuck.done(), "a commit to a node that answers waited for the one to the hung node"
            assert store.unsent(after), "a second commit of the hung node's shard went out"
        after.cancel()  # kept out of the log (as its shard does once the first fails)
    await _settled(store, behind, 1, b"to the hung node", stuck)


SETTLE_BOUND_S = 10.0
"""A bound for a broken run only: a settle that reads nothing of the hung node needs three round trips."""


async def test_a_settle_of_a_shard_elsewhere_reads_nothing_of_the_hung_primary(cluster: EmbeddedCluster,
                                                                              store: LogStore) -> None:
    """A shard on a node that answers, its append in doubt (its reply taken for lost): its settle fences
    the shard, reads its log and asks whether its group is still this instance's — its group's owner key,
    on its own node. It asked for every group's, on every primary, so it waited for the hung one, and
    the shard took no work (every call UNAVAILABLE) for as long as another primary did not answer
    (liveness: a hung primary holds only its own shards; R7 needs only the shard's own group)."""
    with _one_hung(cluster, store) as (_, elsewhere):
        await store.submit(elsewhere, 1, b"landed, its answer taken for lost")
        settle = asyncio.ensure_future(landed_of(store, elsewhere, 0, [(1, Any, b"landed, its answer taken for lost")]))
        done, _ = await asyncio.wait({settle}, timeout=SETTLE_BOUND_S)
        if not done:
            settle.cancel()
        assert done, "the settle of a shard on a node that answers waited for the hung node"
        assert settle.result() == [(1, Any)]
