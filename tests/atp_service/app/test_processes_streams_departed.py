"""A reader process gone for good (its pod rescheduled at a new address, a scale-down) leaves its consumer in the
group and, where it had crossed a gap, the count of entries trimmed unread it owed (``intake/unread.py``). Under
leases a live process tells that count (``atp_ingest_trimmed_unread_total``, ``ingest_trimmed_unread``) once the
owner is known gone — no live process at its address, idle past ``claim_idle_ms``, nothing pending — and removes
the consumer with its hash (``intake/departed.py``): exactly once, keys and consumers bounded. Real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.backlog import BacklogGauge
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.quarantine import Acks, QuarantineStream, drawn_key, run_key
from atp_service.intake.runs import DRAWN_MS, SWEPT
from atp_service.intake.unread import GroupReader, trimmed_unread_key
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any, open_nodes
from reservation import FactKind, Limits
from reservation import fact as make_fact
from tests.atp_service.app.test_processes import SHARDS, processes
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.intake.departed_helpers import Counter
from tests.conftest import services_on
from tests.waiting import until

STREAMS = ("atp:in:pos", "atp:in:wms")
GROUP = "atp"
GONE = "atp-1@10.255.0.9:50051"  # an address no process of the test has
TOTAL = "atp_ingest_trimmed_unread_total"
QUARANTINE = "atp:quarantine"


def _consumers(r: redis.Redis, stream: str) -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in r.xinfo_consumers(stream, GROUP)}


@contextlib.asynccontextmanager
async def _back_at_its_address(redis_url: str, stream: str, name: str) -> AsyncIterator[tuple[Any, ...]]:
    """A process back at the address of the process before it, ``name``, not started yet (its reader of ``stream``,
    ``claim_idle_ms`` 1 s, with its own sweep), the process before's run drawn three times (its starts): a client of
    Redis, a writer of the quarantine stream, the process back's fact desk, its own sweep, its reader, the run
    before."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    settings = dataclasses.replace(ServiceConfig(input_streams=(stream,)).ingest_settings, consumer_name=name,
                                   claim_idle_ms=1_000)
    desk = FactDesk(None, QUARANTINE, 10, metrics=IntakeMetrics())  # type: ignore[arg-type]  # no fact applied
    client = connect_any(redis_url, 2.0)
    own_sweep = DepartedConsumers(client, [stream], GROUP, name, lambda: {"10.0.0.3:1"}, 1_000, quarantine=QUARANTINE)
    back = StreamIngestor(client, desk, settings, ManualClock(1_700_000_000_000), departed=own_sweep)
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(stream, GROUP, name)  # the process before at that address: its entries claimed
        for _ in range(3):
            before = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, name)
        yield r, writer, desk, own_sweep, back, before
    finally:
        await client.aclose()
        await writer.aclose()
        await r.aclose()


async def _late_write(r: Any, writer: Any, stream: str, name: str, run: int) -> tuple[list[bool | None], Any, Any]:
    """A fact of a new entry of ``stream`` read by ``name`` (pending to it), written to the quarantine stream by the
    run ``run`` of ``name``, its answer lost and landing late: what the write landed, the entry's id and the fact."""
    entry = await r.xadd(stream, F("late", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
    await r.xreadgroup(GROUP, name, {stream: ">"})
    fact = make_fact("late", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                     1_700_000_000_000, Limits(), "event_time_ms")
    landed = await QuarantineStream(QUARANTINE, 10).write(writer, [(fact, "late")],
                                                          Acks(GROUP, name, [(stream, entry)], run))
    return landed, entry, fact


async def _late_write_of_the_run_before_lands_nothing(r: Any, writer: Any, stream: str, name: str,
                                                      before: int) -> tuple[Any, Any]:
    """The run ``before``'s late write (``_late_write``) of an entry pending to the process back (claimed back, a group
    made again) lands nothing, the entry left to the run back: the entry's id and the fact."""
    late, entry, fact = await _late_write(r, writer, stream, name, before)
    assert late == [None], "the run before's late write lands nothing"
    assert await r.xlen(QUARANTINE) == 0
    assert len(await r.xpending_range(stream, GROUP, "-", "+", 10, name)) == 1, "still the run back's to decide"
    return entry, fact


async def test_a_gone_processs_owed_count_is_told_by_a_live_one_and_its_consumer_removed(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The gone consumer owes 7 entries trimmed unread and holds one receipt pending. A leased process claims the
    receipt (applied), then tells the 7 (metric and ERROR line) and removes the consumer and its hash. Before, the
    count was never told and the hash and the consumer stayed for good."""
    r = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    for stream in STREAMS:
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        r.xgroup_createconsumer(stream, GROUP, GONE)
    r.xadd(STREAMS[0], F("held", "RECEIPT", "sku-g", "DC", 3, now - 1000).fields())
    r.xreadgroup(GROUP, GONE, {STREAMS[0]: ">"})  # pending under the gone consumer
    owed = trimmed_unread_key(STREAMS[0], GROUP, GONE)
    r.hset(owed, mapping={STREAMS[0]: 7, STREAMS[0] + "\n": "1-5"})
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=STREAMS, claim_idle_ms=100) as start:
        ((service, _),) = await processes(start, 1)
        registry = service.metrics.registry
        await wait_consumed(redis_url, list(STREAMS))
        await until(lambda: registry.get_sample_value(TOTAL, {"stream": STREAMS[0]}) == 7, "the 7 told", 30)
        await until(lambda: all(GONE not in _consumers(r, s) for s in STREAMS), "the gone consumer removed", 30)
        assert not r.exists(owed), "its hash forgotten"
        live = f"atp-1@127.0.0.1:{service.port}"
        await until(lambda: not r.exists(trimmed_unread_key(STREAMS[0], GROUP, live)), "told and forgotten")
        assert registry.get_sample_value(TOTAL, {"stream": STREAMS[0]}) == 7, "told once"
        assert all(set(_consumers(r, s)) <= {live} for s in STREAMS)
    told = [getattr(rec, "entries", None) for rec in caplog.records
            if getattr(rec, "event", "") == "ingest_trimmed_unread"]
    assert told == [7], "one ERROR line, by the live process"


async def test_a_consumer_is_removed_only_gone_idle_and_empty_and_its_count_moved_once(redis_url: str) -> None:
    """Script level: a consumer at a live address, one with an entry pending, and one read from within the bound are
    kept with their counts; a gone one's count is moved once, by the first of two live tellers to sweep, and is not
    told again by that consumer coming back at its address after (E8)."""
    r = aioredis.Redis.from_url(redis_url)
    stream = STREAMS[0]
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xadd(stream, {"f": "v"})
        names = {"held": "atp-1@10.0.0.1:1", "alive": "atp-1@10.0.0.2:1", "gone": "atp-1@10.0.0.3:1",
                 "fresh": "atp-1@10.0.0.4:1"}
        await r.xreadgroup(GROUP, names["held"], {stream: ">"})
        for name in names.values():
            await r.xgroup_createconsumer(stream, GROUP, name)
            await r.hset(trimmed_unread_key(stream, GROUP, name), mapping={stream: 5, stream + "\n": "0-9"})
        tellers = [f"atp-1@10.0.1.{n}:1" for n in (1, 2)]
        counters = [Counter(), Counter()]
        live = {"10.0.0.2:1", "10.0.1.1:1", "10.0.1.2:1"}
        sweeps = [DepartedConsumers(r, [stream], GROUP, teller, lambda: live, 0, quarantine=QUARANTINE)
                  for teller in tellers]
        await r.xreadgroup(GROUP, names["fresh"], {stream: ">"})  # read from now: idle below a 60 s bound
        fresh = DepartedConsumers(r, [stream], GROUP, tellers[0], lambda: live, 60_000, quarantine=QUARANTINE)
        assert await fresh.sweep() == []
        assert sorted(await sweeps[0].sweep()) == sorted([names["gone"], names["fresh"]])
        assert await sweeps[1].sweep() == []
        left = {c["name"].decode() for c in await r.xinfo_consumers(stream, GROUP)}
        assert left == {names["held"], names["alive"]}
        for key in ("held", "alive"):
            assert await r.hget(trimmed_unread_key(stream, GROUP, names[key]), stream) == b"5"
        for n, teller in enumerate(tellers):
            await GroupReader(r, [stream], GROUP, teller, counters[n]).read(10, None)
        assert [c.counts for c in counters] == [{stream: 10}, {}], "gone and fresh told once, by the first sweep"
        back = Counter()  # the gone one back at its address after the sweep: nothing left to tell
        await GroupReader(r, [stream], GROUP, names["gone"], back).read(10, None)
        assert back.counts == {}
        assert await r.hgetall(trimmed_unread_key(stream, GROUP, tellers[0])) == {}
    finally:
        await r.aclose()



async def test_an_owner_back_telling_its_count_keeps_it_though_its_read_delivered_nothing(redis_url: str) -> None:
    """The owner back at its address (not yet in a sweeper's members) reads a quiet stream: nothing delivered, its
    owed 5 answered and told. A sweep between that read and its acknowledgement must not move the 5 (told twice):
    on Redis before 7.2 a read that delivers nothing leaves the consumer's idle time as it was, so it looks gone."""
    r = aioredis.Redis.from_url(redis_url)
    stream, owner, sweeper = STREAMS[0], "atp-1@10.0.0.3:1", "atp-1@10.0.1.1:1"
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(stream, GROUP, owner)
        await asyncio.sleep(0.3)  # idle past the bound below: gone for the while it was away
        sweep = DepartedConsumers(r, [stream], GROUP, sweeper, lambda: {"10.0.1.1:1"}, 200,
                                 quarantine=QUARANTINE)  # the owner not read yet
        told = [Counter(), Counter()]
        back = GroupReader(r, [stream], GROUP, owner, told[0])
        await back.read(10, None)  # its scripts registered: nothing owed, nothing delivered
        await r.hset(trimmed_unread_key(stream, GROUP, owner), mapping={stream: 5, stream + "\n": "0-9"})
        ack = back._ack

        async def swept_first(**kwargs: Any) -> Any:
            await sweep.sweep()  # the sweeper's turn between the owner's read and its acknowledgement
            return await ack(**kwargs)

        back._ack = swept_first
        await back.read(10, None)
        await GroupReader(r, [stream], GROUP, sweeper, told[1]).read(10, None)
        assert [c.counts for c in told] == [{stream: 5}, {}], "the 5 told by the owner alone"
    finally:
        await r.aclose()


class _ListedThenSwept:
    """A client whose consumers, once listed, are swept by another sweeper before this one's script runs."""

    def __init__(self, client: Any, other: DepartedConsumers) -> None:
        self._client, self._other = client, other

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def xinfo_consumers(self, stream: str, group: str) -> Any:
        listed = await self._client.xinfo_consumers(stream, group)
        await self._other.sweep()
        return listed


async def test_a_consumer_two_sweepers_listed_is_said_removed_by_the_one_that_removed_it(redis_url: str) -> None:
    """Two live processes list the gone consumer; the first removes it before the second's script runs. The second
    removed nothing: no ingest_consumer_removed line of its own, atp_ingest_consumers_removed_total counted once."""
    r = aioredis.Redis.from_url(redis_url)
    stream, gone = STREAMS[0], "atp-1@10.0.0.3:1"
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(stream, GROUP, gone)
        live = {"10.0.1.1:1", "10.0.1.2:1"}
        first = DepartedConsumers(r, [stream], GROUP, "atp-1@10.0.1.1:1", lambda: live, 0, quarantine=QUARANTINE)
        second = DepartedConsumers(_ListedThenSwept(r, first), [stream], GROUP, "atp-1@10.0.1.2:1", lambda: live, 0,
                                  quarantine=QUARANTINE)
        assert await second.sweep() == [], "removed by the first"
        assert {c["name"] for c in await r.xinfo_consumers(stream, GROUP)} == set()
    finally:
        await r.aclose()


async def test_a_gone_consumers_quarantine_run_is_removed_with_it_and_its_late_write_lands_nothing(
        redis_url: str) -> None:
    """The gone consumer's run key beside the quarantine stream (``quarantine.run_key``, one per ``name@address``) is
    removed with it: before, it stayed for good, one more with every new address. The swept run is not drawn again
    by the consumer coming back at that address, so a quarantine write of the swept run, its answer lost and landing
    late on an entry pending to the new run, writes and acknowledges nothing (E8: the new run decides it)."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    stream, gone, quarantine = STREAMS[0], "atp-1@10.0.0.3:1", QUARANTINE
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(stream, GROUP, gone)
        for _ in range(3):  # three starts at that address: run 3
            swept = await QuarantineStream(quarantine, 10).run_of(r, GROUP, gone)
        live = {"10.0.1.1:1"}
        sweep = DepartedConsumers(r, [stream], GROUP, "atp-1@10.0.1.1:1", lambda: live, 0, quarantine=quarantine)
        assert await sweep.sweep() == [gone]
        assert not await r.exists(run_key(quarantine, GROUP, gone)), "its run removed with it"
        assert 0 < await r.pttl(drawn_key(quarantine, GROUP, gone)) <= DRAWN_MS, "its draws' record left to expire"
        back = QuarantineStream(quarantine, 10)
        assert await back.run_of(r, GROUP, gone) > swept, "the run back at its address above the one swept"
        landed, _, _ = await _late_write(r, writer, stream, gone, swept)  # pending to the new run
        assert landed == [None], "the swept run's late write lands nothing"
        assert await r.xlen(quarantine) == 0
        assert len(await r.xpending_range(stream, GROUP, "-", "+", 10, gone)) == 1, "still the new run's to decide"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_a_run_drawn_as_a_sweep_takes_its_consumer_for_gone_keeps_the_late_write_of_the_run_before_out(
        redis_url: str) -> None:
    """A process back at its address draws its run (its start, before it reads) while a sweeper that has not seen it
    live yet takes its consumer for gone (idle, nothing pending). The sweep deleted the run key the process had just
    drawn (its run recorded swept); a quarantine write of the run before, its answer lost and landing late, found the
    key missing — a run Redis lost, to the write script — set it back to its own run, and wrote and acknowledged the
    fact of an entry pending to the process back (E8: that run decides it). Its run drawn, the consumer is kept as a
    read answered is (``unread.answered_key``): the run key stays, the late write lands nothing, the process's own
    lands. Before: the late write landed ([True]), the entry acknowledged."""
    stream, name, sweeper = STREAMS[0], "atp-1@10.0.0.3:1", "atp-1@10.0.1.1:1"
    async with _back_at_its_address(redis_url, stream, name) as (r, writer, desk, _, back, before):
        await asyncio.sleep(1.1)  # idle past the bound below: a second, however slow the draw then
        await back._create_groups()  # its start: its run drawn, nothing read yet
        sweep = DepartedConsumers(r, [stream], GROUP, sweeper, lambda: {"10.0.1.1:1"}, 1_000, quarantine=QUARANTINE)
        await sweep.sweep()  # the process back not seen live yet
        entry, fact = await _late_write_of_the_run_before_lands_nothing(r, writer, stream, name, before)
        own = await desk.quarantine.write(writer, [(fact, "late")],
                                          Acks(GROUP, name, [(stream, entry)], back._consumer_run))
        assert own == [True], "the run back's own write lands"


async def test_a_run_drawn_past_the_marks_bound_swept_unseen_keeps_the_late_write_of_the_run_before_out(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The draw's mark keeps a process back for ``claim_idle_ms`` only; past it, a process still not seen live by a
    sweeper (its members entry lapsed for a stalled loop, no group held) whose reads delivered nothing (Redis before
    7.2 keeps the consumer's idle time) is taken for gone, its run key deleted while it runs. A quarantine write of
    the run before, its answer lost and landing late, found the key missing — a run Redis lost, to the write
    script — and wrote and acknowledged the fact of an entry pending to the process back (E8). The run it carries is
    at or below the consumer's own run swept (``runs.SWEPT``): a run swept, never one Redis lost (set in the script
    that deleted the key), so it lands nothing, whenever it lands; the process back draws its run again
    and its own write lands. Before: the late write landed ([True]), the entry acknowledged."""
    stream, name, sweeper = STREAMS[0], "atp-1@10.0.0.3:1", "atp-1@10.0.1.1:1"
    async with _back_at_its_address(redis_url, stream, name) as (r, writer, desk, own_sweep, back, before):
        await asyncio.sleep(1.1)  # idle past the bound below
        await back._create_groups()  # its start: its run drawn, marked
        await r.xreadgroup(GROUP, name, {stream: ">"})  # a read that delivers nothing: idle kept (Redis < 7.2)
        await asyncio.sleep(1.1)  # the draw's mark past claim_idle_ms
        sweep = DepartedConsumers(r, [stream], GROUP, sweeper, lambda: {"10.0.1.1:1"}, 1_000, quarantine=QUARANTINE)
        if not await sweep.sweep():  # Redis 7.2 and later: the read made it idle no longer, kept
            pytest.skip("this Redis resets a consumer's idle time at a read that delivers nothing")
        entry, fact = await _late_write_of_the_run_before_lands_nothing(r, writer, stream, name, before)
        swept_run = back._consumer_run
        assert swept_run is not None
        acks = Acks(GROUP, name, [(stream, entry)], swept_run)
        assert await desk.quarantine.write(writer, [(fact, "late")], acks) == [None], "its own run swept too"
        run = await own_sweep.kept_run(desk.quarantine)  # at its next sweep: drawn again, above
        assert run > swept_run
        assert _drawn_again(caplog) == [(name, swept_run, run, "swept")], "one WARNING line says so"
        assert await desk.quarantine.write(writer, [(fact, "late")], acks._replace(run=run)) == [True], "its own lands"


async def test_a_run_swept_is_drawn_again_at_the_sweep_and_a_run_redis_lost_kept(redis_url: str) -> None:
    """The run of a process whose quarantined facts all go to their owners, which write them (it writes none itself),
    swept all the same (a sweeper not seeing it live): drawn again at its own next sweep (``keep_run``), else every
    owner's write of its facts was refused for as long as it ran. A run key Redis lost (gone, its run swept below it)
    is kept: the write takes it again, and drawn again it might start below the run written before."""
    r = aioredis.Redis.from_url(redis_url)
    stream, name = QuarantineStream(QUARANTINE, 10), "p@10.0.0.3:1"
    mark = f"{name}:answered"
    try:
        await r.set(run_key(QUARANTINE, GROUP, name), 2)
        run = await stream.run_of(r, GROUP, name, mark)
        assert run == 3
        await r.delete(run_key(QUARANTINE, GROUP, name))  # Redis lost it: its run swept before below
        await r.zadd(drawn_key(QUARANTINE, GROUP, name), {SWEPT: run - 1})
        told: list[tuple[int, int, str]] = []
        assert await stream.keep_run(r, GROUP, name, mark, lambda *why: told.append(why)) == run, "Redis lost it: kept"
        await r.delete(run_key(QUARANTINE, GROUP, name))
        await r.zadd(drawn_key(QUARANTINE, GROUP, name), {SWEPT: run})  # a sweep deleted it
        assert await stream.keep_run(r, GROUP, name, mark, lambda *why: told.append(why)) == run + 1, "swept: again"
        assert await stream.keep_run(r, GROUP, name, mark, lambda *why: told.append(why)) == run + 1, "kept since"
        assert told == [(run, run + 1, "swept")], "told once, where drawn again"
    finally:
        await r.aclose()


class _NthAnswerLost:
    """A client whose ``nth`` script call's answer is lost (a timeout), its command not sent; the rest as ``client``."""

    def __init__(self, client: Any, nth: int) -> None:
        self._client, self._nth, self._calls = client, nth, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, source: str) -> Any:
        script = self._client.register_script(source)

        async def call(**kw: Any) -> Any:
            self._calls += 1
            if self._calls == self._nth:
                raise TimeoutError("Timeout reading from socket")
            return await script(**kw)
        return call


async def test_a_run_drawn_again_whose_draw_answer_was_lost_is_told_at_the_draw_retried(redis_url: str) -> None:
    """A run swept, drawn again at the sweep round (``keep_run``), that draw's answer lost (a timeout): the draw
    retried at the next round tells it (run before, run now, why), once. Before: the run before was forgotten with
    the lost answer and the retry drew silently: no WARNING, no count, every write of the swept run refused."""
    r = aioredis.Redis.from_url(redis_url)
    client = _NthAnswerLost(r, 2)
    stream, name = QuarantineStream(QUARANTINE, 10), "p@10.0.0.4:1"
    mark = f"{name}:answered"
    told: list[tuple[int, int, str]] = []
    try:
        run = await stream.run_of(client, GROUP, name, mark)
        await r.delete(run_key(QUARANTINE, GROUP, name))
        await r.zadd(drawn_key(QUARANTINE, GROUP, name), {SWEPT: run})  # a sweep deleted it
        with pytest.raises(TimeoutError):
            await stream.keep_run(client, GROUP, name, mark, lambda *why: told.append(why))
        again = await stream.keep_run(client, GROUP, name, mark, lambda *why: told.append(why))
        assert again == run + 1
        assert await stream.keep_run(client, GROUP, name, mark, lambda *why: told.append(why)) == again, "kept"
        assert told == [(run, again, "swept")], "told once, at the draw retried"
    finally:
        await r.aclose()


def _drawn_again(caplog: pytest.LogCaptureFixture) -> list[tuple[Any, ...]]:
    """The ``quarantine_run_drawn_again`` lines: (consumer, run before, run now, why)."""
    return [(getattr(rec, "consumer", None), getattr(rec, "run_before", None), getattr(rec, "run_now", None),
             getattr(rec, "why", None)) for rec in caplog.records
            if getattr(rec, "event", "") == "quarantine_run_drawn_again" and rec.levelname == "WARNING"]


async def test_a_process_back_at_its_address_where_another_drew_since_does_not_fence_that_one_out(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A process paused past its lease, back at its address where another started meanwhile under the same consumer
    name (it stops by itself at its renewal, ``address_shared``), whose reading loop reaches its sweep round first:
    the run key past its run is the other's draw, no lost draw of its own. It keeps its run (its writes refused,
    E8), and the process serving there keeps its own (its writes land). Before: it drew again above the other's,
    the other's quarantine writes refused until its next sweep round, and this one's let in."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    stream, name = STREAMS[0], "atp-1@10.0.0.3:1"
    paused_desk, serving_desk = QuarantineStream(QUARANTINE, 10), QuarantineStream(QUARANTINE, 10)
    paused, serving = (DepartedConsumers(r, [stream], GROUP, name, lambda: {"10.0.0.3:1"}, 1_000,
                                         quarantine=QUARANTINE) for _ in range(2))
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        before = await paused.kept_run(paused_desk)
        run = await serving.kept_run(serving_desk)  # started at the address while the other was paused
        entry = await r.xadd(stream, F("own", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
        await r.xreadgroup(GROUP, name, {stream: ">"})
        fact = make_fact("own", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                         1_700_000_000_000, Limits(), "event_time_ms")
        await paused.sweep()  # the paused one back: its sweep round before its renewal stops it
        assert await paused.kept_run(paused_desk) == before, "the other's draw is no lost draw of its own"
        assert _drawn_again(caplog) == [], "nothing drawn again: nothing told"
        acks = Acks(GROUP, name, [(stream, entry)], before)
        assert await paused_desk.write(writer, [(fact, "late")], acks) == [None], "a run before, refused"
        written = await serving_desk.write(writer, [(fact, "late")], acks._replace(run=run))
        assert written == [True], "the process serving there is not fenced out"
        assert await serving.kept_run(serving_desk) == run
    finally:
        await writer.aclose()
        await r.aclose()


async def test_consumers_no_sweep_removes_are_counted_in_a_gauge(redis_url: str) -> None:
    """A consumer not named ``<name>@<address>`` (``ATP_OWNERSHIP=keyspace``, one made by hand) or renamed at a live
    address (``ATP_CONSUMER_NAME`` changed) is removed by no sweep, left with its keys for the operator to remove
    (OPERATIONS.md "A stuck or dead consumer"): ``atp_ingest_consumers`` shows the group's consumers growing.
    Before, no metric counted them."""
    r = aioredis.Redis.from_url(redis_url)
    stream, reader = STREAMS[0], "atp-2@10.0.1.1:1"
    registry = CollectorRegistry()
    gauges = [Gauge(name, "", ["stream"], registry=registry) for name in ("pending", "lag", "consumers")]
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for name in ("atp", "atp-1@10.0.1.1:1", reader):  # keyspace's, then renamed at the live address
            await r.xgroup_createconsumer(stream, GROUP, name)
        sweep = DepartedConsumers(r, [stream], GROUP, reader, lambda: {"10.0.1.1:1"}, 0, quarantine=QUARANTINE)
        assert await sweep.sweep() == []
        await BacklogGauge(r, GROUP, [stream], *gauges).measure(stream)
        assert registry.get_sample_value("consumers", {"stream": stream}) == 3
    finally:
        await r.aclose()
