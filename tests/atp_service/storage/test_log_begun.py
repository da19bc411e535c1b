"""A log's ``log-begun`` key (R7): set by the append script that lands the log's entry 1, in the same call, and by
no other entry — whatever the group commit packs beside it, over however many shards."""

from __future__ import annotations

import asyncio
import math

import pytest
from redis.exceptions import RedisError

from atp_service.storage.log import CommitWindow, LogStore, connect
from atp_service.storage.resp import seq_of


class _Promising(CommitWindow):
    """A window that waits for ``company`` entries (60 s at most): every entry submitted in one turn goes in one
    call, whatever the host's pace."""

    def __init__(self, company: int) -> None:
        super().__init__(delay_s=60.0, min_rate=0)
        self.busy, self.enough = True, company
        self.measure_at = math.inf


async def test_one_group_commit_over_several_shards_marks_exactly_the_logs_whose_entry_1_it_lands(
        redis_url: str) -> None:
    """The packer's keys (four an entry) and the script's reading of them must agree: a key read one place off
    marks another key of the shard (its fence, its owner: a WRONGTYPE or a claim broken) or another shard's log."""
    client = connect(redis_url, 5.0)
    window = _Promising(company=1)
    store = LogStore(client, "t:", pipeline_max=64, window=window)
    try:
        await store.claim(6)
        await asyncio.wait_for(store.submit(5, 1, b"before"), 30)  # shard 5 begun before: its entries are 2 and 3
        window.enough = 11  # the eleven below wait for each other
        entries_before = store.metrics.pipeline_size.collect()[0].samples
        calls_before = next(s.value for s in entries_before if s.name == "atp_log_pipeline_entries_count")
        sent = [store.submit(0, 1, b"0.1"), store.submit(1, 1, b"1.1"), store.submit(5, 2, b"5.2"),
                store.submit(0, 2, b"0.2"), store.submit(3, 1, b"3.1"), store.submit(1, 2, b"1.2"),
                store.submit(5, 3, b"5.3"), store.submit(0, 3, b"0.3")]
        sent.append(store.submit_group([(2, 1, b"2.1"), (3, 2, b"3.2"), (4, 1, b"4.1")]))
        await asyncio.wait_for(asyncio.gather(*sent), 30)
        calls = next(s.value for s in store.metrics.pipeline_size.collect()[0].samples
                     if s.name == "atp_log_pipeline_entries_count")
        assert calls - calls_before == 1, "the eleven entries went in one EVALSHA"
        for shard, seqs in {0: [1, 2, 3], 1: [1, 2], 2: [1], 3: [1, 2], 4: [1], 5: [1, 2, 3]}.items():
            read = await client.xrange(f"t:{{g{shard}}}:log")
            assert [(seq_of(i), f[b"e"]) for i, f in read] == [(s, f"{shard}.{s}".encode() if s > 1 or shard != 5
                                                                else b"before") for s in seqs]
            assert await client.get(f"t:{{g{shard}}}:log-begun") == b"1", shard  # once, by entry 1 alone
        for shard in range(6):  # nothing else of a shard's was written by the appends
            assert await client.type(f"t:{{g{shard}}}:fence") in (b"string", b"none")
            assert await client.type(f"t:{{g{shard}}}:owner") == b"string"
        window.enough = 1  # alone from here: a lone entry must not wait out the 60 s window for ten more
        await asyncio.wait_for(store.submit(2, 2, b"2.2"), 30)  # the owners still hold: later appends land
    finally:
        await client.aclose()


async def test_an_entry_1_refused_with_its_group_marks_nothing(store: LogStore) -> None:
    with pytest.raises(RedisError, match="GAP"):
        await store.submit_group([(0, 1, b"a"), (1, 5, b"a hole")])
    assert await store.client.exists("t:{g0}:log", "t:{g0}:log-begun", "t:{g1}:log-begun") == 0
    await store.submit(0, 1, b"a")
    assert await store.client.get("t:{g0}:log-begun") == b"1"
