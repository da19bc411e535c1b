"""A group commit sent by a task on one Redis (replicas to wait for, no idle connection, tracing) whose task is
cancelled — before it ran, or while its round trip was under way — still answers its entries (in doubt, R7):
else their shard waited for ever behind a commit that never ended (liveness). The same on a cluster is in
test_log_cluster.py."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[LogStore]:
    """A log that, once it has claimed its keyspace, waits for a replica (there is none: ``WAIT`` holds each
    commit up to its timeout), so every commit goes by a task."""
    log_store = LogStore(open_nodes(redis_url, 5.0, wait_timeout_ms=10_000), "t:", pipeline_max=64)
    await log_store.claim(4)
    log_store.nodes.wait_replicas = 1
    yield log_store
    await log_store.nodes.aclose()


async def _commit_of(store: LogStore) -> asyncio.Task[None]:
    await asyncio.sleep(0)  # the flush runs next: it takes the entries into a commit, sent by a task
    (commit,) = store._tasks
    return commit


@pytest.mark.parametrize("entries", [1, 2])  # one entry (``SoloCommit``'s path), several (``_flush_batches``)
async def test_a_commit_cancelled_before_it_ran_answers_its_entries_in_doubt(store: LogStore, entries: int) -> None:
    sent = [store.submit(shard, 1, b"never sent") for shard in range(entries)]
    commit = await _commit_of(store)
    assert inspect.getcoroutinestate(commit.get_coro()) == inspect.CORO_CREATED
    commit.cancel()
    await asyncio.wait([commit])
    assert all(entry.done() for entry in sent), "an entry of a commit cancelled before it ran was never answered"
    for entry in sent:
        with pytest.raises(RedisConnectionError, match="abandoned"):
            entry.result()
    assert store._in_flight == 0 and not store._tasks


async def test_a_commit_cancelled_during_its_round_trip_answers_its_entries_in_doubt(store: LogStore) -> None:
    entry = store.submit(0, 1, b"sent, its WAIT under way")
    commit = await _commit_of(store)
    await asyncio.sleep(0.05)  # (whenever the cancel comes, the entry ends answered: here, mid round trip)
    commit.cancel()
    await asyncio.wait([commit])
    assert entry.done(), "an entry of a commit cancelled at its round trip was never answered"
    with pytest.raises(RedisConnectionError):
        entry.result()  # in doubt: it may have landed (it did here), settled by fence and read (R7)
