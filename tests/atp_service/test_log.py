"""The log's group commit: the commit window (busy → wait for company; quiet → send at once), R7."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from redis.exceptions import RedisError

from atp_service.channel_store import ChannelStore
from atp_service.log import CommitWindow, Fenced, LogStore, connect, seq_of
from atp_service.metrics import METRICS
from reservation import ChannelUpdate, Ledger, Limits, StockStatus


def test_a_quiet_log_sends_at_once() -> None:
    window = CommitWindow(delay_s=0.002, min_rate=1000)
    for i in range(5):  # 5 entries over 0.5 s: 10/s
        window.arrived(i * 0.1 + 0.1)
    assert not window.busy
    assert window.wait_s(first_pending_at=0.5, now=0.5) == 0.0


def test_a_busy_log_waits_for_company_but_never_past_the_delay() -> None:
    window = CommitWindow(delay_s=0.002, min_rate=1000)
    for i in range(201):  # 200 entries in 0.1 s: 2,000/s
        window.arrived(1.0 + i * 0.0005)
    assert window.busy
    assert window.wait_s(first_pending_at=1.2, now=1.2005) == pytest.approx(0.0015)
    assert window.wait_s(first_pending_at=1.2, now=1.3) == 0.0  # waited long enough already


def test_busy_ends_when_the_rate_drops() -> None:
    window = CommitWindow(delay_s=0.002, min_rate=1000)
    for i in range(201):
        window.arrived(i * 0.0005)
    assert window.busy
    window.arrived(5.0)  # one entry after a 4.9 s lull closes the bucket at a low rate
    assert not window.busy


def test_a_zero_delay_is_never_busy() -> None:
    window = CommitWindow(delay_s=0.0, min_rate=0)
    for i in range(1000):
        window.arrived(i * 0.0001)
    assert not window.busy


def _round_trips() -> tuple[float, float]:
    """(entries sent, Redis calls made) by every LogStore in this process so far."""
    value = METRICS.registry.get_sample_value
    return value("atp_log_pipeline_entries_sum") or 0.0, value("atp_log_pipeline_entries_count") or 0.0


async def _submit_in_separate_turns(store: LogStore, seqs: range) -> list[asyncio.Future[None]]:
    futures = []
    for seq in seqs:
        futures.append(store.submit(0, seq, b"entry"))
        await asyncio.sleep(0)  # each entry in its own turns of the event loop
        await asyncio.sleep(0)
    return futures


async def test_busy_entries_of_many_turns_share_one_redis_call(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    store = LogStore(client, "t:", pipeline_max=64, window=CommitWindow(delay_s=0.2, min_rate=1))
    try:
        await store.claim()
        await store.submit(0, 1, b"first")  # opens the first rate bucket; quiet until now: sent at once
        await asyncio.sleep(0.15)  # the next arrival closes the bucket at >= 1 entry/s: busy
        entries_before, calls_before = _round_trips()
        await asyncio.gather(*await _submit_in_separate_turns(store, range(2, 11)))
        entries_after, calls_after = _round_trips()
        assert (calls_after - calls_before, entries_after - entries_before) == (1, 9), "nine turns, one call"
        assert await client.xlen("t:log:0") == 10  # R7: every acknowledged entry is in the log
    finally:
        await client.aclose()


async def test_quiet_entries_go_out_at_once(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    store = LogStore(client, "t:", pipeline_max=64, window=CommitWindow(delay_s=0.2, min_rate=1_000_000))
    try:
        await store.claim()
        entries_before, calls_before = _round_trips()
        await asyncio.gather(*await _submit_in_separate_turns(store, range(1, 6)))
        entries_after, calls_after = _round_trips()
        assert entries_after - entries_before == 5
        assert calls_after - calls_before >= 2, "not held back for company"
        assert await client.xlen("t:log:0") == 5
    finally:
        await client.aclose()


async def test_a_newer_claim_fences_every_write_of_the_older_store_and_none_of_it_lands(redis_url: str) -> None:
    """Two instances on one keyspace (a deploy gone wrong) must never both write the log."""
    client = connect(redis_url, 5.0)
    older, newer = (LogStore(client, "t:", pipeline_max=64) for _ in range(2))
    replaced: list[str] = []
    older.on_fenced.append(lambda: replaced.append("older"))
    try:
        await older.claim()
        await older.submit(0, 1, b"before")  # the older owner writes while it owns the keyspace
        await newer.claim()
        with pytest.raises(Fenced):
            await older.submit(0, 2, b"group commit")
        with pytest.raises(Fenced):
            await older.append_atomic({0: (2, b"cross"), 1: (1, b"shard")})
        with pytest.raises(Fenced):
            await older.save_snapshot(0, 1, Ledger(0, Limits()).snapshot())
        assert older.fenced and replaced == ["older"]  # told once
        assert [seq_of(i) for i, _ in await client.xrange("t:log:0")] == [1]
        assert await client.exists("t:log:1", "t:snap:0") == 0
        await newer.submit(0, 2, b"after")  # the newer one writes on
        await newer.append_atomic({0: (3, b"cross"), 1: (1, b"shard")})
        assert [seq_of(i) for i, _ in await client.xrange("t:log:0")] == [1, 2, 3]
    finally:
        await client.aclose()


async def test_a_cross_shard_append_lands_whole_or_not_at_all(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    store = LogStore(client, "t:", pipeline_max=64)
    try:
        await store.claim()
        await store.append_atomic({0: (1, b"a"), 1: (1, b"b")})
        with pytest.raises(RedisError, match="is not after"):
            await store.append_atomic({0: (2, b"a"), 1: (1, b"again")})  # shard 1's id is taken
        assert await client.xlen("t:log:0") == 1 and await client.xlen("t:log:1") == 1  # shard 0's not written
    finally:
        await client.aclose()


async def test_a_replaced_instance_publishes_nothing_to_the_channels(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    older, newer = (LogStore(client, "t:", pipeline_max=64) for _ in range(2))
    channels = ChannelStore(client, "t:", epoch=lambda: older.epoch)
    update = ChannelUpdate("web", "A", "DC", 5, None, StockStatus.IN_STOCK, 1, 1_000, 1_000)
    try:
        await older.claim()
        await channels.write([("web", 1000, [update])])
        await newer.claim()
        with pytest.raises(RedisError, match="FENCED"):
            await channels.write([("web", 1000, [msgspec.structs.replace(update, version=2)])])
        assert [seq_of(i) for i, _ in await client.xrange(channels.stream("web"))] == [1]
    finally:
        await client.aclose()
