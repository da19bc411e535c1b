"""R7: a shard's log cut short by hand behind its snapshot (``XTRIM … MAXLEN 0``, a stream deleted)
loses entries the service acknowledged, with no hole for replay to find: recovery read the snapshot,
found no entry after it, and served the state before the lost ones with health SERVING — while every
write of that shard was refused by Redis (its entry's id already taken) and answered OUTCOME_UNKNOWN,
for good. The start is refused instead (exit status 2), naming the shard and what to do."""

from __future__ import annotations

import pytest
import redis

from atp_service.app.keyspace import StartupError
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

SNAP, LOG = "atp:{g0}:snap", "atp:{g0}:log"


async def snapshot_then_more(start_service: ServiceFactory, r: redis.Redis) -> None:
    """Entries 1-3 in a snapshot (a graceful stop), then entries 4-6 in the log of an instance the
    next start fences (as after kill -9)."""
    first, client = await start_service(shards=1)
    for i in range(3):
        await client.record_events([receipt(f"e{i}", "A", "DC", 1)])
    await first.stop(grace_s=0.1)
    assert r.exists(SNAP) and r.xlen(LOG) == 1  # the snapshot's own entry is kept
    _, client = await start_service(shards=1)
    for i in range(3, 6):
        await client.record_events([receipt(f"e{i}", "A", "DC", 1)])


async def test_a_start_on_a_log_emptied_behind_its_snapshot_is_refused(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    await snapshot_then_more(start_service, r)
    r.xtrim(LOG, maxlen=0)  # the fault: entries 4-6 trimmed by hand; the stream's newest id stays 6
    with pytest.raises(StartupError, match=r"shard 0: recovery reached entry 3 .* newest id is 6.*restore Redis"):
        await start_service(shards=1)


async def test_a_start_on_a_snapshot_past_its_deleted_log_is_refused(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    await snapshot_then_more(start_service, r)
    r.delete(LOG)  # the fault: the stream deleted; the snapshot (entry 3) stays
    with pytest.raises(StartupError, match=r"shard 0: recovery reached entry 3 .* newest id is 0.*restore Redis"):
        await start_service(shards=1)


async def test_a_start_on_a_deleted_log_never_snapshotted_is_refused(
        start_service: ServiceFactory, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service(shards=1)
    for i in range(3):
        await client.record_events([receipt(f"e{i}", "A", "DC", 1)])
    assert not r.exists(SNAP) and r.xlen(LOG) == 3  # no snapshot yet: the log holds every entry
    assert r.exists("atp:{g0}:log-begun")  # set by entry 1's append, in its script
    r.delete(LOG)  # the fault: the stream deleted by hand (or evicted) before any snapshot trimmed it
    with pytest.raises(StartupError, match=r"shard 0: .*restore Redis"):
        await start_service(shards=1)


async def test_a_refused_lost_log_names_its_mark_and_deleting_it_serves_the_shard_empty(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The refusal's way out without a backup (the loss accepted, the shard served empty): the mark that the log
    was begun, named in the message — no other key of the shard's tells a start that refuses for ever."""
    r = redis.Redis.from_url(redis_url)
    first, client = await start_service(shards=1)
    await client.record_events([receipt("e0", "A", "DC", 1)])
    await first.stop(grace_s=0.1)
    r.delete(LOG, SNAP)  # the fault: the shard's log and snapshot both gone (deleted by hand, evicted)
    with pytest.raises(StartupError, match=r"shard 0: .*restore Redis.*DEL atp:\{g0\}:log-begun"):
        await start_service(shards=1)
    r.delete("atp:{g0}:log-begun")  # the operator accepts the loss
    _, client = await start_service(shards=1)
    await client.record_events([receipt("e1", "A", "DC", 1)])  # the shard's log begins again, at entry 1
    assert r.xlen(LOG) == 1 and r.get("atp:{g0}:log-begun") == b"1"


async def test_a_log_begun_by_an_earlier_build_is_marked_by_its_next_append_and_refused_once_lost(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A log whose entry 1 an earlier build wrote (or an older process of a rolling upgrade) has no mark: an append
    of this version's, landing on it, marks it in the same script — else deleted, it was served empty for ever."""
    r = redis.Redis.from_url(redis_url)
    _, client = await start_service(shards=1)
    for i in range(3):
        await client.record_events([receipt(f"e{i}", "A", "DC", 1)])
    r.delete("atp:{g0}:log-begun")  # entries 1-3 as an earlier build leaves them: no mark
    await client.record_events([receipt("e3", "A", "DC", 1)])  # entry 4, this version's
    assert not r.exists(SNAP) and r.xlen(LOG) == 4
    r.delete(LOG)  # the fault: the stream deleted by hand (or evicted) before any snapshot trimmed it
    with pytest.raises(StartupError, match=r"shard 0: .*missing and it has no snapshot"):
        await start_service(shards=1)
