"""Every consumer's quarantine run key (``quarantine.run_key``) is found by the departed sweep (``intake/departed.py``)
once its process is gone for good, whether or not the consumer is in the group: the draw names the consumer in the
group's set of drawn names (``runs.drawn_names_key``), which the sweep walks beside ``XINFO CONSUMERS``. A run so
swept stays fenced (E8). Real redis-server."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis.asyncio as aioredis

from atp_service import ManualClock
from atp_service.config import ServiceConfig
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.facts import FactDesk
from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.quarantine import Acks, QuarantineStream, run_key, written_key
from atp_service.intake.runs import drawn_names_key
from atp_service.intake.unread import ANSWERED_MS, answered_key, trimmed_unread_key
from atp_service.metrics import IntakeMetrics
from atp_service.storage.nodes import connect_any, open_nodes
from reservation import FactKind, Limits
from reservation import fact as make_fact
from tests.atp_service.fact_helpers import F

STREAM, GROUP, QUARANTINE = "atp:in:pos", "atp", "atp:quarantine"
GONE, LIVE = "atp-1@10.0.0.3:1", "atp-2@10.0.1.1:1"  # LIVE's address is the one live process's


def _mark(name: str) -> str:
    return answered_key(trimmed_unread_key(STREAM, GROUP, name))


def _sweep(r: Any, least_idle_ms: int = 0) -> DepartedConsumers:
    return DepartedConsumers(r, [STREAM], GROUP, LIVE, lambda: {"10.0.1.1:1"}, least_idle_ms, quarantine=QUARANTINE)


async def _late_write(r: Any, url: str, name: str, run: int) -> list[bool | None]:
    """A fact of a new entry read by ``name`` (pending to it), quarantined by its run ``run``: what the write landed."""
    entry = await r.xadd(STREAM, F("late", "SALE", "sku-q", "S1", 1, 1_700_000_000_000).fields())
    await r.xreadgroup(GROUP, name, {STREAM: ">"})
    fact = make_fact("late", "F", FactKind.SALE.value, "sku-q", "S1", 1, 1_700_000_000_000, "",
                     1_700_000_000_000, Limits(), "event_time_ms")
    return await QuarantineStream(QUARANTINE, 10).write(open_nodes(url, 5.0), [(fact, "late")],
                                                         Acks(GROUP, name, [(STREAM, entry)], run))


async def test_a_run_drawn_by_a_process_gone_before_its_first_read_is_swept(redis_url: str) -> None:
    """A process that died between its draw and its first XREADGROUP (a crash-looping pod at a new address each
    time) never made its consumer in the group. Before, the sweep listed only ``XINFO CONSUMERS`` (and the owing
    set): its run key stayed in Redis for ever, one more with every failed start. Now the draw names it where the
    sweep looks, and the sweep deletes it, fenced as any run swept: its late write lands nothing (E8)."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        run = await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE, _mark(GONE))
        assert await _sweep(r).sweep() == [GONE]
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 0, "its run key swept"
        assert await r.smembers(drawn_names_key(written_key(QUARANTINE), GROUP)) == set(), "its name forgotten"
        assert await _late_write(r, redis_url, GONE, run) == [None], "the swept run's late write lands nothing"
        assert await r.xlen(QUARANTINE) == 0
    finally:
        await r.aclose()


async def test_a_run_of_a_consumer_removed_with_its_group_is_swept(redis_url: str) -> None:
    """A consumer that read and owed nothing, removed by deleting its group (an operator's XGROUP DESTROY, the group
    made again since), is in no group and in no owing set. Before, its run key stayed for ever; now it is swept."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE, _mark(GONE))
        await r.xreadgroup(GROUP, GONE, {STREAM: ">"})
        await r.xgroup_destroy(STREAM, GROUP)
        await r.xgroup_create(STREAM, GROUP, id="0")
        assert await _sweep(r).sweep() == [GONE]
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 0, "its run key swept"
    finally:
        await r.aclose()


async def test_a_drawn_run_not_read_yet_is_kept_while_live_or_marked(redis_url: str) -> None:
    """A process that drew its run and has read nothing yet is not swept: not at a live address, nor, at an address
    not seen live yet, within the least idle time of its draw's answered mark."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        other = "atp-3@10.0.1.1:1"  # another consumer name at the live address
        await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, other, _mark(other))
        await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, GONE, _mark(GONE))
        assert await _sweep(r, least_idle_ms=600_000).sweep() == [], "its draw's mark keeps it"
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 1
        assert await _sweep(r).sweep() == [GONE]
        assert await r.exists(run_key(QUARANTINE, GROUP, other)) == 1, "at a live address: kept"
    finally:
        await r.aclose()


async def test_a_drawn_run_not_read_yet_is_marked_for_the_least_idle_time_however_long(redis_url: str) -> None:
    """A consumer in no group yet (drawn, not read: a slow start, a paused process) is kept from the sweep by its
    draw's answered mark alone, for ``claim_idle_ms`` from the draw. The mark was kept ``ANSWERED_MS`` (600 s)
    whatever that was: with ``ATP_CLAIM_IDLE_MS`` past it, the mark was gone before its age reached the least idle
    time, and the sweep took the run of a process not ``claim_idle_ms`` idle (its writes refused till it drew again).
    The draw now keeps the mark at least ``claim_idle_ms``."""
    least = ANSWERED_MS + 300_000
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        departed = DepartedConsumers(r, [STREAM], GROUP, GONE, lambda: {"10.0.1.1:1"}, least, quarantine=QUARANTINE)
        await departed.kept_run(QuarantineStream(QUARANTINE, 10))
        assert await r.pttl(departed.mark) > ANSWERED_MS, "a sweep round's draw: the mark outlives the least idle time"
        await r.delete(departed.mark)
        client = connect_any(redis_url, 2.0)
        settings = dataclasses.replace(ServiceConfig(input_streams=(STREAM,)).ingest_settings, consumer_name=LIVE,
                                       claim_idle_ms=least)
        starting = DepartedConsumers(client, [STREAM], GROUP, LIVE, lambda: {"10.0.1.1:1"}, least,
                                     quarantine=QUARANTINE)
        desk = FactDesk(None, QUARANTINE, 10, metrics=IntakeMetrics())  # type: ignore[arg-type]  # no fact applied
        ingestor = StreamIngestor(client, desk, settings, ManualClock(1_700_000_000_000), departed=starting)
        await ingestor.start()  # its run drawn before its first read
        await ingestor.stop()
        assert await r.pttl(starting.mark) > ANSWERED_MS, "a start's draw: the mark outlives the least idle time"
    finally:
        await r.aclose()
