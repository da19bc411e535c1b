"""The log's group commit: the commit window (busy → wait for company; quiet → send at once), R7."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import msgspec
import pytest
from redis.exceptions import DataError, RedisError

from atp_service.storage.append_resp import AppendPacker
from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.keys import CHANNELS
from atp_service.storage.log import CommitWindow, Fenced, LogStore, SnapshotUnreadable, connect, encode_snapshot
from atp_service.storage.nodes import Call
from atp_service.storage.records import Pending
from atp_service.storage.resp import seq_of
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


def test_a_busy_log_waits_for_the_company_its_rate_promises() -> None:
    window = CommitWindow(delay_s=0.002, min_rate=1000)
    for i in range(201):  # 2,000/s: four entries come in one 2 ms window
        window.arrived(1.0 + i * 0.0005)
    assert window.enough == 4
    for i in range(111):  # 1,100/s: two
        window.arrived(2.0 + i * 0.0009)
    assert window.enough == 2


def test_a_zero_delay_is_never_busy() -> None:
    window = CommitWindow(delay_s=0.0, min_rate=0)
    for i in range(1000):
        window.arrived(i * 0.0001)
    assert not window.busy


def _round_trips(store: LogStore) -> tuple[float, float]:
    """(entries sent, Redis calls made) by ``store`` so far."""
    (histogram,) = store.metrics.pipeline_size.collect()
    value = {sample.name: sample.value for sample in histogram.samples}
    return value["atp_log_pipeline_entries_sum"], value["atp_log_pipeline_entries_count"]


async def _submit_in_separate_turns(store: LogStore, seqs: range) -> list[asyncio.Future[None]]:
    futures = []
    for seq in seqs:
        futures.append(store.submit(0, seq, b"entry"))
        await asyncio.sleep(0)  # each entry in its own turns of the event loop
        await asyncio.sleep(0)
    return futures


@contextlib.asynccontextmanager
async def _claimed_store(redis_url: str, window: CommitWindow) -> AsyncIterator[tuple[Any, LogStore]]:
    """A client and a log of four shards claimed, with ``window``; the client closed afterwards."""
    client = connect(redis_url, 5.0)
    store = LogStore(client, "t:", pipeline_max=64, window=window)
    try:
        await store.claim(4)
        yield client, store
    finally:
        await client.aclose()


class _Promising(CommitWindow):
    """A window that has measured the log busy, its rate promising ``company`` entries a window,
    whatever the host's pace: measured here, a stall of the host between two turns closed a rate
    bucket at a low rate and sent the entries in two calls (the measuring is tested above)."""

    def __init__(self, company: int) -> None:
        super().__init__(delay_s=60.0, min_rate=0)
        self.busy, self.enough = True, company
        self.measure_at = math.inf  # never measured (``LogStore.submit`` counts arrivals itself)


async def test_busy_entries_of_many_turns_share_one_redis_call(redis_url: str) -> None:
    async with _claimed_store(redis_url, _Promising(company=9)) as (client, store):
        entries_before, calls_before = _round_trips(store)
        await asyncio.wait_for(asyncio.gather(*await _submit_in_separate_turns(store, range(1, 10))), 30)  # not 60 s
        entries_after, calls_after = _round_trips(store)
        assert (calls_after - calls_before, entries_after - entries_before) == (1, 9), "nine turns, one call"
        assert await client.xlen("t:{g0}:log") == 9  # R7: every acknowledged entry is in the log


async def test_a_waiting_commit_goes_once_the_company_it_waited_for_is_there(redis_url: str) -> None:
    async with _claimed_store(redis_url, CommitWindow(delay_s=60.0, min_rate=0)) as (_, store):
        entries_before, calls_before = _round_trips(store)
        first = store.submit(0, 1, b"first")  # busy from the start (min_rate 0): waits for company
        await asyncio.sleep(0)  # a flush scheduled at once (no window) runs in this turn and takes the entry
        assert store.unsent(first) and not first.done(), "sent without waiting for company"
        await asyncio.wait_for(asyncio.gather(first, store.submit(0, 2, b"second")), 30)  # not the 60 s
        entries_after, calls_after = _round_trips(store)
        assert (calls_after - calls_before, entries_after - entries_before) == (1, 2)


async def test_a_commit_whose_company_is_already_there_does_not_wait(redis_url: str) -> None:
    """A group of entries (or those that came while a commit was in flight) is all the company a
    wait was for: it goes at once, not after the window."""
    async with _claimed_store(redis_url, CommitWindow(delay_s=60.0, min_rate=0)) as (_, store):
        await asyncio.wait_for(store.submit_group([(0, 1, b"a"), (1, 1, b"b"), (2, 1, b"c")]), 30)  # not the 60 s


async def test_quiet_entries_go_out_at_once(redis_url: str) -> None:
    async with _claimed_store(redis_url, CommitWindow(delay_s=0.2, min_rate=1_000_000)) as (client, store):
        entries_before, calls_before = _round_trips(store)
        await asyncio.gather(*await _submit_in_separate_turns(store, range(1, 6)))
        entries_after, calls_after = _round_trips(store)
        assert entries_after - entries_before == 5
        assert calls_after - calls_before >= 2, "not held back for company"
        assert await client.xlen("t:{g0}:log") == 5


async def test_a_newer_claim_fences_every_write_of_the_older_store_and_none_of_it_lands(redis_url: str) -> None:
    """Two instances on one keyspace (a deploy gone wrong) must never both write the log."""
    client = connect(redis_url, 5.0)
    older, newer = (LogStore(client, "t:", pipeline_max=64) for _ in range(2))
    replaced: list[str] = []
    older.on_fenced.append(lambda: replaced.append("older"))
    try:
        await older.claim(4)
        await older.submit(0, 1, b"before")  # the older owner writes while it owns the keyspace
        await newer.claim(4)
        with pytest.raises(Fenced):
            await older.submit(0, 2, b"group commit")
        with pytest.raises(Fenced):
            await older.submit_group([(0, 2, b"cross"), (1, 1, b"shard")])
        with pytest.raises(Fenced):
            await older.write_snapshot(0, 1, encode_snapshot(1, Ledger(0, Limits()).snapshot()))
        assert older.fenced and replaced == ["older"]  # told once
        assert [seq_of(i) for i, _ in await client.xrange("t:{g0}:log")] == [1]
        assert await client.exists("t:{g1}:log", "t:{g0}:snap") == 0
        await newer.submit(0, 2, b"after")  # the newer one writes on
        await newer.submit_group([(0, 3, b"cross"), (1, 1, b"shard")])
        assert [seq_of(i) for i, _ in await client.xrange("t:{g0}:log")] == [1, 2, 3]
    finally:
        await client.aclose()


async def test_a_cross_shard_append_lands_whole_or_not_at_all(store: LogStore) -> None:
    await store.submit_group([(0, 1, b"a"), (1, 1, b"b")])
    with pytest.raises(RedisError, match="TAKEN"):
        await store.submit_group([(0, 2, b"a"), (1, 1, b"again")])  # shard 1's id is taken
    assert await store.client.xlen("t:{g0}:log") == 1  # shard 0's not written
    assert await store.client.xlen("t:{g1}:log") == 1


async def test_a_refused_group_lands_nothing_and_holds_back_later_entries_of_its_streams(store: LogStore) -> None:
    await store.submit(1, 1, b"one")
    alone = store.submit(2, 1, b"alone")
    group = store.submit_group([(0, 1, b"a"), (1, 5, b"gap")])  # shard 1's entry 5 would leave a hole
    after = store.submit(0, 1, b"after the group")
    await alone
    with pytest.raises(RedisError, match="GAP"):
        await group
    with pytest.raises(RedisError, match="SKIPPED"):
        await after  # shard 0's entry 1 was refused with its group: a later one must not land
    assert await store.client.xlen("t:{g0}:log") == 0
    assert await store.client.xlen("t:{g1}:log") == 1


async def test_a_fenced_shard_refuses_every_append_sent_before_the_fence(store: LogStore) -> None:
    """R7: an append whose reply was lost may still be on its way; once the settle has fenced the
    shard, it can no longer land, so what the settle reads is final."""
    await store.submit(0, 1, b"one")
    stale = store._tokens[0]
    await store.fence(0)
    late = LogStore(store.client, "t:", pipeline_max=64)  # plays the script still on its way: the old token
    late.epochs, late._tokens = dict(store.epochs), {0: stale, 1: 0}
    with pytest.raises(RedisError, match="STALE"):
        await late.submit(0, 2, b"late")
    await late.submit(1, 1, b"other shards are not fenced")
    with pytest.raises(RedisError, match="STALE"):
        await late.write_snapshot(0, 1, encode_snapshot(1, Ledger(0, Limits()).snapshot()))
    await store.submit(0, 2, b"two")  # the fencing writer goes on
    assert [d for _, d in await _entries(store, 0)] == [b"one", b"two"]
    restarted = LogStore(store.client, "t:", pipeline_max=64)
    await restarted.claim(4)
    assert restarted._tokens == store._tokens


async def test_a_snapshot_keeps_its_own_entry_so_the_next_append_is_checked_against_it(store: LogStore) -> None:
    for seq in (1, 2):
        await store.submit(0, seq, b"e")
    await store.write_snapshot(0, 2, encode_snapshot(2, Ledger(0, Limits()).snapshot()))
    assert [seq_of(i) for i, _ in await store.client.xrange("t:{g0}:log")] == [2]
    with pytest.raises(RedisError, match="GAP"):
        await store.submit(0, 4, b"a hole")
    await store.submit(0, 3, b"next")
    assert [s for s, _ in await _entries(store, 0)] == [3]


async def test_an_emptied_stream_is_checked_against_the_newest_id_it_ever_had(store: LogStore) -> None:
    for seq in (1, 2):
        await store.submit(0, seq, b"e")
    await store.client.xtrim("t:{g0}:log", minid="3-0")  # as a trim past the newest entry leaves it
    assert await store.client.xlen("t:{g0}:log") == 0
    with pytest.raises(RedisError, match="GAP"):
        await store.submit(0, 4, b"a hole")
    with pytest.raises(RedisError, match="TAKEN"):
        await store.submit(0, 2, b"again")
    await store.submit(0, 3, b"next")


async def test_an_entry_s_completion_runs_as_it_is_settled_and_never_for_a_cancelled_one(
        store: LogStore, caplog: pytest.LogCaptureFixture) -> None:
    """A shard answers its callers from ``then`` (a unary Reserve's reply): called in the same turn
    that settles the entry, before any done callback of its future could run; a raising ``then``
    leaves the other entries of its commit answered; a cancelled entry is neither sent nor followed."""
    seen: list[tuple[str, bool, BaseException | None]] = []
    callbacks_run: list[str] = []

    def follow(name: str, fut: asyncio.Future[None]) -> None:
        fut.add_done_callback(lambda _: callbacks_run.append(name))

    def then(name: str) -> None:
        seen.append((name, name in callbacks_run, futures[name].exception()))
        if name == "raises":
            raise RuntimeError("a completion's bug")

    futures: dict[str, asyncio.Future[None]] = {}
    for name, seq in (("raises", 1), ("cancelled", 2), ("refused", 5), ("durable", 1)):
        shard = 1 if name == "durable" else 0
        futures[name] = store.submit(shard, seq, name.encode(), partial(then, name))
        follow(name, futures[name])
    futures["cancelled"].cancel()  # before it is sent: stays out of the log
    await asyncio.wait([futures["durable"], futures["refused"]], timeout=30)
    assert [(name, ran) for name, ran, _ in seen] == [("raises", False), ("refused", False), ("durable", False)]
    assert isinstance(seen[1][2], RedisError) and seen[0][2] is None and seen[2][2] is None
    assert "a log entry's completion failed" in caplog.text
    assert [d for _, d in await _entries(store, 0)] == [b"raises"]


async def test_a_replaced_instance_raises_no_fence_of_the_newer_one(store: LogStore) -> None:
    newer = LogStore(store.client, "t:", pipeline_max=64)
    await newer.claim(4)
    with pytest.raises(Fenced):
        await store.fence(0)
    await newer.submit(0, 1, b"the newer one's appends are not refused STALE")


@pytest.mark.parametrize("open_map", [([], []), ([b"k" * 16], [b"p" * 25])])
async def test_a_snapshot_in_the_earlier_dedupe_layout_is_refused_not_misread(
        store: LogStore, open_map: tuple[list[bytes], list[bytes]]) -> None:
    """E8's memory before its columns were split: rows of digest halves and a 25-byte payload, the
    times, and the open map as two lists. Recovery must stop on it, not take its bytes for columns."""
    record = msgspec.msgpack.decode(encode_snapshot(3, Ledger(0, Limits()).snapshot()))
    record[1][3] = [b"\0" * 41 * 2, b"\0" * 8 * 2, *open_map]  # LedgerSnapshot.seen
    await store.client.set(store.keys.snap(0), msgspec.msgpack.encode(record))
    with pytest.raises(SnapshotUnreadable, match="shard 0"):
        await store.load_snapshot(0)
    await store.client.set(store.keys.snap(0), encode_snapshot(3, Ledger(0, Limits()).snapshot()))
    assert (await store.load_snapshot(0)) is not None  # this version's own layout reads back


async def _entries(store: LogStore, shard: int) -> list[tuple[int, bytes]]:
    """The shard's log after its snapshot (what recovery replays)."""
    snap = await store.load_snapshot(shard)
    return [entry async for entry in store.entries_after(shard, snap.seq if snap else 0)]


async def test_a_replaced_instance_publishes_nothing_to_the_channels(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    older, newer = (LogStore(client, "t:", pipeline_max=64) for _ in range(2))
    channels = ChannelStore(client, "t:", epoch=lambda: older.epochs[CHANNELS])
    update = ChannelUpdate("web", "A", "DC", 5, None, StockStatus.IN_STOCK, 1, 1_000, 1_000)
    try:
        await older.claim(4)
        await channels.write([("web", 1000, [update])])
        await newer.claim(4)
        with pytest.raises(RedisError, match="FENCED"):
            await channels.write([("web", 1000, [msgspec.structs.replace(update, version=2)])])
        assert [seq_of(i) for i, _ in await client.xrange(channels.stream("web"))] == [1]
    finally:
        await channels.aclose()  # its write connections and the client


async def test_a_write_path_that_raises_answers_the_entries_and_the_log_flushes_again(redis_url: str) -> None:
    """Whatever ends a group commit, its entries are answered and the next one goes: here the write
    lane refuses the client (decoded replies) when the commit is about to be written."""
    client = connect(redis_url, 5.0)
    client.connection_pool.connection_kwargs["decode_responses"] = True
    store = LogStore(client, "raise:", pipeline_max=8)
    try:
        first = store.submit(0, 1, b"a")
        with pytest.raises(ValueError, match="decode_responses"):
            await asyncio.wait_for(first, 5)
        assert store._in_flight == 0  # the log is free for the next commit
        second = store.submit(0, 1, b"a")
        with pytest.raises(ValueError, match="decode_responses"):
            await asyncio.wait_for(second, 5)
    finally:
        await client.aclose()


async def test_an_entry_that_cannot_be_packed_fails_alone_and_the_log_goes_on(store: LogStore) -> None:
    """A script call that cannot be put together fails its entries (nothing reached Redis) and
    frees the log: the next commit is written."""
    bad = store.submit(0, 1, "not bytes")  # type: ignore[arg-type]  # what a bug upstream could hand over
    with pytest.raises(DataError, match="cannot be sent"):
        await asyncio.wait_for(bad, 5)
    assert store._in_flight == 0
    await asyncio.wait_for(store.submit(0, 1, b"good"), 5)
    assert [seq_of(i) for i, _ in await store.client.xrange(store.keys.log(0))] == [1]


async def test_an_entry_sent_alone_is_packed_as_the_packer_packs_it(store: LogStore) -> None:
    """A commit of one entry packs its call alone (``SoloCommit._flush``: ``AppendPacker.pack_one``):
    the bytes of ``AppendPacker.pack`` whatever the shard's kept parts were (none yet, its fence
    raised, its seqs a digit longer), each entry landing; one whose data cannot be packed there fails
    alone (nothing sent) and the log goes on."""
    sent: list[bytes | None] = []
    begin = store.nodes.begin

    def noted(calls: list[Call], done: Any) -> bool:  # the real ``begin``, its calls noted
        sent.extend(call.packed for call in calls)
        return begin(calls, done)

    store.nodes.begin = noted  # type: ignore[method-assign]
    packer = AppendPacker(store._APPEND.sha, store._keys_of)  # a packer of its own: parts of its own
    expected = []
    for shard, seq in [(0, 1), (1, 1), *((0, s) for s in range(2, 12)), (1, 2)]:
        if (shard, seq) == (0, 6):
            await store.fence(0)  # a raised fence: shard 0's kept parts carry another token from here
        pending = Pending(shard, seq, b"entry %d" % seq, store.epochs[shard], store._tokens[shard], 0,
                          asyncio.get_running_loop().create_future())
        expected.append(packer.pack([pending])[1])
        await asyncio.wait_for(store.submit(shard, seq, pending.data), 5)  # alone: answered before the next
    assert sent == expected
    assert [seq_of(i) for i, _ in await store.client.xrange(store.keys.log(0))] == list(range(1, 12))
    with pytest.raises(DataError, match="cannot be sent"):
        await asyncio.wait_for(store.submit(1, 3, "not bytes"), 5)  # type: ignore[arg-type]
    await asyncio.wait_for(store.submit(1, 3, b"good"), 5)
    assert [seq_of(i) for i, _ in await store.client.xrange(store.keys.log(1))] == [1, 2, 3]


async def test_a_claim_that_lands_again_late_answers_as_it_did_instead_of_claiming_above_it(store: LogStore) -> None:
    """A start retries a claim whose reply was lost (Redis did not answer); the first copy may land
    after the retry's. It claimed again above it, so the instance found its keyspace taken by
    itself — 'replaced', exit 3, not restarted — with no other instance anywhere."""
    epoch = store.epoch
    keys = [k for g in [*range(4), CHANNELS] for k in (store.keys.owner(g), store.keys.fence(g))]
    late = Call(LogStore._CLAIM, [*keys, store.keys.claimants], [store.claim_token])
    assert int((await store.nodes.run_one(late))[0]) == epoch  # answered as the claim was
    await store.submit(0, 1, b"still the owner")
    newer = LogStore(store.client, "t:", pipeline_max=64)  # another instance does claim above it
    assert await newer.claim(4) > epoch
    with pytest.raises(Fenced):
        await store.submit(0, 2, b"replaced")


async def test_a_claim_landing_late_after_a_newer_instance_claimed_leaves_the_newer_one_owner(
        store: LogStore) -> None:
    """Instance A's claim is sent twice (its first reply lost); the retry lands first, then instance B
    claims, then A's first copy lands: the token then found is B's, so the copy claimed above B.
    A holds the epoch its retry answered, B its own: both were refused 'replaced' at their next
    write (exit status 3 each, neither restarted) and nobody served the keyspace."""
    keys = [k for g in [*range(4), CHANNELS] for k in (store.keys.owner(g), store.keys.fence(g))]
    late = Call(LogStore._CLAIM, [*keys, store.keys.claimants], [store.claim_token])  # A's first copy
    newer = LogStore(store.client, "t:", pipeline_max=64)
    await newer.claim(4)  # B, after A's retry landed (the fixture's claim)
    await store.nodes.run_one(late)
    assert (await store.client.get(store.keys.owner(0))).decode() == newer.epochs[0]
    await newer.submit(0, 1, b"B still owns the keyspace")


async def test_a_claim_rises_above_the_last_even_when_the_clock_went_back(store: LogStore) -> None:
    """An epoch is drawn no lower than the time now (so Redis back from older data cannot draw a lost
    claim's epoch again), and above every owner key: a claim made with a clock ahead (set back since)
    is still outranked by the next claim, by one."""
    ahead = store.epoch + 10 ** 9  # an earlier claim's, drawn when a clock was days ahead
    for group in [*range(4), CHANNELS]:
        await store.client.set(store.keys.owner(group), ahead)
    newer = LogStore(store.client, "t:", pipeline_max=64)
    assert await newer.claim(4) == ahead + 1
    assert not await store.still_owner()


@pytest.mark.parametrize("entries", [1, 2], ids=["sent alone", "sent together"])
async def test_an_append_whose_reply_cannot_be_read_is_in_doubt_and_the_log_goes_on(store: LogStore,
                                                                                  entries: int) -> None:
    """The appends land in Redis, but what reaches the log as their reply has a shape no append
    returns (here: a reply short of one per call). Whether they landed is then unknown: each entry
    fails with a plain RedisError — in doubt, for its shard to settle by fence and read (R7) — never
    as landed, never left unsettled (a shard waiting on it forever); the commit slot is given back
    and the next entry lands."""
    begin = store.nodes.begin
    garbled = [True]

    def garbling(calls: list[Call], done: Any) -> bool:  # the real ``begin``; the first commit's reply garbled
        if garbled:
            garbled.pop()
            return begin(calls, lambda replies: done([]))
        return begin(calls, done)

    store.nodes.begin = garbling  # type: ignore[method-assign]
    futures = [store.submit(0, seq, b"entry %d" % seq) for seq in range(1, entries + 1)]
    for fut in futures:
        with pytest.raises(RedisError, match="the reply to a log append could not be read"):
            await asyncio.wait_for(fut, 10)
    assert store._in_flight == 0
    await asyncio.wait_for(store.submit(0, entries + 1, b"next"), 10)  # the log goes on
    assert [seq_of(i) for i, _ in await store.client.xrange(store.keys.log(0))] == list(range(1, entries + 2))


@pytest.mark.parametrize("garble", ["one result too many", "a result that is no bytes"])
async def test_every_entry_of_a_commit_whose_reply_cannot_be_read_is_in_doubt_and_told(store: LogStore,
                                                                                      garble: str) -> None:
    """A commit of two entries (shards 0 and 1) whose reply cannot be read: every outcome is read
    before any entry is settled, so none is taken as landed on a reply that says nothing certain (R7),
    and each entry's ``then`` (its shard's ``_on_append_done``) runs once: a shard whose entry was
    settled but never told would wait on it, its callers too, until its next append ended."""
    begin = store.nodes.begin
    garbled = [True]

    def garbling(calls: list[Call], done: Any) -> bool:  # the real ``begin``; the first commit's reply garbled
        if not garbled:
            return begin(calls, done)
        garbled.pop()

        def garble_reply(replies: list[Any]) -> None:
            (results,) = replies
            done([[*results, b""]] if garble == "one result too many" else [[results[0], 7]])

        return begin(calls, garble_reply)

    store.nodes.begin = garbling  # type: ignore[method-assign]
    told: list[int] = []
    futures = [store.submit(shard, 1, b"entry", partial(told.append, shard)) for shard in (0, 1)]
    for fut in futures:
        with pytest.raises(RedisError, match="the reply to a log append could not be read"):
            await asyncio.wait_for(fut, 10)
    assert sorted(told) == [0, 1]
    assert store._in_flight == 0
