"""A consumer's quarantine run deleted by the departed sweep (``intake/departed.py``) is fenced by that consumer's own
record (its draws' record, ``runs.SWEPT``), never by a record shared with the other consumers: a sweep of one
consumer cannot fence another's live run, and the swept run's late write stays refused whatever became of the
shared ``…:runs-swept`` (E8; liveness). Real redis-server."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.quarantine import Acks, QuarantineStream, drawn_key, run_key, swept_runs_key
from atp_service.storage.nodes import open_nodes
from reservation import FactKind, Limits
from reservation import fact as make_fact
from tests.atp_service.fact_helpers import F

STREAM, GROUP, QUARANTINE = "atp:in:pos", "atp", "atp:quarantine"
GONE, LIVE = "atp-1@10.0.0.3:1", "atp-2@10.0.1.1:1"  # LIVE's address is the one live process's


async def _write(r: Any, writer: Any, name: str, run: int, event_id: str) -> list[bool | None]:
    """A fact of a new entry read by ``name`` (pending to it), quarantined by its run ``run``: what the write landed."""
    entry = await r.xadd(STREAM, F(event_id, "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
    await r.xreadgroup(GROUP, name, {STREAM: ">"})
    fact = make_fact(event_id, "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                     1_700_000_000_000, Limits(), "event_time_ms")
    return await QuarantineStream(QUARANTINE, 10).write(writer, [(fact, "late")], Acks(GROUP, name, [(STREAM, entry)],
                                                                                        run))


def _sweep(r: Any) -> DepartedConsumers:
    return DepartedConsumers(r, [STREAM], GROUP, LIVE, lambda: {"10.0.1.1:1"}, 0, quarantine=QUARANTINE)


async def test_a_sweep_of_another_consumer_does_not_fence_a_live_run_redis_lost(redis_url: str) -> None:
    """Redis back from older data lost the live consumer's run key (its draw) and ``…:runs-swept`` went back with
    it; then a sweep of another consumer, gone, raised the shared highest swept past the live run. Before, the write
    script took the live run's key, gone and at or below that shared highest, for one swept with its consumer: every
    quarantine write of the live consumer refused ("claimed by another consumer", its entries kept pending) until its
    next sweep round drew its run again — a run fenced by a sweep of someone else. Now the live run is taken again
    (a key Redis lost) and its writes land; its sweep round keeps it."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    live = QuarantineStream(QUARANTINE, 10)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(STREAM, GROUP, GONE)
        for _ in range(3):  # three starts at the gone address: its run 3
            await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)
        run = await live.run_of(r, GROUP, LIVE)
        assert run <= 3
        # Redis back from older data: the live run's draw lost, the shared highest swept with it
        await r.delete(run_key(QUARANTINE, GROUP, LIVE), drawn_key(QUARANTINE, GROUP, LIVE),
                       swept_runs_key(QUARANTINE))
        assert await _sweep(r).sweep() == [GONE]
        assert await _write(r, writer, LIVE, run, "live") == [True], "the live run's write lands"
        assert await r.xlen(QUARANTINE) == 1
        assert await live.keep_run(r, GROUP, LIVE, "mark") == run, "not swept: kept, not drawn again"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_a_swept_runs_late_write_stays_refused_without_the_shared_record(redis_url: str) -> None:
    """The swept consumer's own record says its run was swept: with ``…:runs-swept`` gone (deleted, evicted), the
    swept run's late write lands nothing, and a process back at its address draws above the swept run (else the late
    write took the key back from it). Before, the write took the key for one Redis lost and landed."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(STREAM, GROUP, GONE)
        for _ in range(3):
            swept = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)
        assert await _sweep(r).sweep() == [GONE]
        await r.delete(swept_runs_key(QUARANTINE))
        assert await _write(r, writer, GONE, swept, "late") == [None], "the swept run's late write lands nothing"
        assert await r.xlen(QUARANTINE) == 0
        back = QuarantineStream(QUARANTINE, 10)
        run = await back.run_of(r, GROUP, GONE)
        assert run > swept, "the run back at its address above the one swept"
        assert await _write(r, writer, GONE, swept, "later") == [None], "nor after the run back's draw"
        assert await _write(r, writer, GONE, run, "own") == [True], "the run back's own write lands"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_a_run_before_stays_refused_after_a_sweep_that_records_no_run_swept(redis_url: str) -> None:
    """A sweeper of the version before (a rolling restart) deletes a live consumer's run key and raises only the
    shared ``…:runs-swept``, recording no run swept in the consumer's draws' record. The late write of the run before
    at that name (a process paused there before this one started) finds the key gone: its record's later draw says it
    is a run before, so it lands nothing (E8) — else it took the key back and wrote and acknowledged the live
    process's entry. The live process's own run, its record's last draw, is taken again: its write lands, its run
    kept (liveness)."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    live = QuarantineStream(QUARANTINE, 10)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        before = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)  # the process paused at the address
        run = await live.run_of(r, GROUP, GONE)  # the process started there since
        assert run > before
        await r.delete(run_key(QUARANTINE, GROUP, GONE))  # the sweep of the version before: the key deleted,
        await r.set(swept_runs_key(QUARANTINE), run)  # the shared highest raised, the record left as it was
        assert await _write(r, writer, GONE, before, "late") == [None], "the run before's late write lands nothing"
        assert await r.xlen(QUARANTINE) == 0
        assert len(await r.xpending_range(STREAM, GROUP, "-", "+", 10, GONE)) == 1, "still the live run's to decide"
        assert await _write(r, writer, GONE, run, "own") == [True], "the live run's own write lands"
        assert await live.keep_run(r, GROUP, GONE, "mark") == run, "kept: not drawn again"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_past_its_records_life_a_swept_runs_late_write_lands_nothing_on_entries_claimed_from_it(
        redis_url: str) -> None:
    """The run swept is fenced by its consumer's record for that record's life only (``runs.DRAWN_MS``, a day past
    the sweep): past it, the key gone and the record expired, the late write of a process paused that long is taken
    for one of a run Redis lost. What it then lands nothing on is its entries, claimed from it before the sweep (the
    sweep takes only a consumer with nothing pending): each pending to its claimant, which decides it (E8). A
    process back at that address draws above the swept run, whose write landing after that draw lands nothing."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        swept = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)  # the process paused, later
        entry = await r.xadd(STREAM, F("held", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
        await r.xreadgroup(GROUP, GONE, {STREAM: ">"})  # read, its fact quarantined, the write not sent yet
        await r.xclaim(STREAM, GROUP, LIVE, 0, [entry])  # past claim_idle_ms: another claims it
        assert await _sweep(r).sweep() == [GONE]
        await r.delete(drawn_key(QUARANTINE, GROUP, GONE))  # a day on: the record expired (its PEXPIRE)
        fact = make_fact("held", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                         1_700_000_000_000, Limits(), "event_time_ms")
        late = QuarantineStream(QUARANTINE, 10)
        acks = Acks(GROUP, GONE, [(STREAM, entry)], swept)
        assert await late.write(writer, [(fact, "late")], acks) == [None], "pending to another: nothing landed"
        assert await r.xlen(QUARANTINE) == 0
        assert [p["consumer"] for p in await r.xpending_range(STREAM, GROUP, "-", "+", 10)] == [LIVE.encode()]
        run = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)
        assert run > swept, "a process back at the address draws above the swept run"
        assert await _write(r, writer, GONE, swept, "after") == [None], "the swept run's write after that draw"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_a_late_write_holding_nothing_pending_leaves_no_run_key_of_a_consumer_gone(redis_url: str) -> None:
    """A write whose run key and record are gone (the record expired a day past the sweep) and none of whose entries
    is pending to its consumer (removed, its entries claimed from it before): nothing to take back. Before, the write
    set the run key back all the same — a key of a consumer no longer in the group, which no sweep visits again and
    nothing expires: kept for ever, one per such write. A write holding an entry pending to it takes the key back."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        swept = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)
        entry = await r.xadd(STREAM, F("held", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
        await r.xreadgroup(GROUP, GONE, {STREAM: ">"})
        await r.xclaim(STREAM, GROUP, LIVE, 0, [entry])
        assert await _sweep(r).sweep() == [GONE]
        await r.delete(drawn_key(QUARANTINE, GROUP, GONE))  # a day on: the record expired (its PEXPIRE)
        fact = make_fact("held", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                         1_700_000_000_000, Limits(), "event_time_ms")
        acks = Acks(GROUP, GONE, [(STREAM, entry)], swept)
        assert await QuarantineStream(QUARANTINE, 10).write(writer, [(fact, "late")], acks) == [None]
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 0, "no run key left of a consumer gone"
        assert await _write(r, writer, LIVE, 7, "lost") == [True], "a run key Redis lost, an entry pending: taken"
        assert await r.get(run_key(QUARANTINE, GROUP, LIVE)) == b"7"
    finally:
        await writer.aclose()
        await r.aclose()


async def test_past_its_records_life_a_swept_runs_late_write_is_refused_by_a_later_draw_the_record_holds(
        redis_url: str) -> None:
    """The documented limit, pinned (OPERATIONS.md, ``ingest_consumer_removed``): past the record's life the swept
    run's late write lands on an entry pending to a process started under that name since only where that process's
    run key is gone and the record holds none of its draws. Its key deleted (a sweeper of the version before), its
    draw within the day: the draw, a later run, refuses the write (E8). Its draw a day old too: the write lands, and
    the key it takes back (the run before's) is moved up again by that process's next write (liveness)."""
    r = aioredis.Redis.from_url(redis_url)
    writer = open_nodes(redis_url, 5.0)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await r.xgroup_createconsumer(STREAM, GROUP, GONE)
        swept = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)
        assert await _sweep(r).sweep() == [GONE]
        await r.delete(drawn_key(QUARANTINE, GROUP, GONE))  # a day on: the record expired
        run = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE)  # a process back at that address
        assert run > swept
        await r.delete(run_key(QUARANTINE, GROUP, GONE))  # a sweeper of the version before: no run swept recorded
        entry = await r.xadd(STREAM, F("back", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
        await r.xreadgroup(GROUP, GONE, {STREAM: ">"})  # pending to the process back
        fact = make_fact("back", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                         1_700_000_000_000, Limits(), "event_time_ms")
        acks = Acks(GROUP, GONE, [(STREAM, entry)], swept)
        assert await QuarantineStream(QUARANTINE, 10).write(writer, [(fact, "late")], acks) == [None], \
            "the process back's draw, in the record, refuses the run before"
        assert await r.xlen(QUARANTINE) == 0
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 0
        await r.delete(drawn_key(QUARANTINE, GROUP, GONE))  # its draw a day old too: the limit
        assert await QuarantineStream(QUARANTINE, 10).write(writer, [(fact, "late")], acks) == [True]
        assert await r.get(run_key(QUARANTINE, GROUP, GONE)) == str(swept).encode()
        assert await _write(r, writer, GONE, run, "next") == [True], "the process back's write lands"
        assert await r.get(run_key(QUARANTINE, GROUP, GONE)) == str(run).encode()
    finally:
        await writer.aclose()
        await r.aclose()
