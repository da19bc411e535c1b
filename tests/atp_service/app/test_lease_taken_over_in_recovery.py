"""A group taken over by another process while this one recovers it (``ownership = leases``): the newer owner's
entry 1 lands after this process read the log missing. It said ERROR "group N: taken but not recovered" with a
``LogGone`` ("entries acknowledged as durable are missing … restore Redis from a backup") and counted a failed
recovery for its data — an operator paged for a race two processes ran as they should. A taking another process
won (outranked, or taken over as it was recovered) is nothing for a balance's caller to hear: a start included."""

from __future__ import annotations

import gc
import logging
import weakref
from typing import Any

import pytest
import redis.asyncio as aredis

from atp_service.app.membership import Membership
from atp_service.engine import recovery
from atp_service.storage.leases import GroupLeases
from atp_service.storage.records import number_of
from reservation import Ledger, Limits, LogEntry, encode_entry
from tests.atp_service.app.test_lease_lost_mid_renewal import SHARDS, start, stocked_group
from tests.conftest import ServiceFactory
from tests.ports import held_port

__all__ = ["start"]  # the fixture, used here


async def newer_taking(redis_url: str, prefix: str, group: int) -> None:
    """What another process's taking of ``group`` and its first write leave in Redis: its lease, its owner key at a
    higher epoch, and its log's entry 1 with the log-begun mark (as the append script writes them, in one call)."""
    r = aredis.Redis.from_url(redis_url)
    try:
        tag = f"{prefix}{{g{group}}}:"
        epoch = f"{number_of(await r.get(tag + 'owner')) + 1}:the-newer-process"
        await r.set(tag + "lease", "the-newer-process", px=600_000)
        await r.set(tag + "owner", epoch)
        await r.xadd(tag + "log", {"e": encode_entry(LogEntry(ts=1_700_000_000_000, events=[]))}, id="1-0")
        await r.incr(tag + "log-begun")
    finally:
        await r.aclose()


def taken_over_at_the_log_read(monkeypatch: pytest.MonkeyPatch, membership: Membership, redis_url: str,
                               group: int) -> list[str]:
    """Once ``group``'s log has been read (by its recovery), another process takes the group (``newer_taking``)
    before this one goes on. Returns a list that holds the log's key once that happened."""
    store = membership.leases.store
    read, log_key, taken = store.client.xrange, store.keys.log(group), []

    async def taken_over_after_the_read(name: Any, *args: Any, **kwargs: Any) -> Any:
        rows = await read(name, *args, **kwargs)
        if name == log_key and not taken:
            taken.append(name)  # this process paused here (a GC pause, a stalled VM): another takes the group
            await newer_taking(redis_url, store.keys.prefix, group)
        return rows

    monkeypatch.setattr(store.client, "xrange", taken_over_after_the_read)
    return taken


async def test_a_group_taken_over_while_recovered_is_said_as_lost_not_as_its_log_lost(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    group = 3
    service, _client, membership, engine, _sku = await stocked_group(start, 1, 5)  # group 3 never written
    await membership._hand_over(group)
    taken = taken_over_at_the_log_read(monkeypatch, membership, redis_url, group)
    caplog.set_level(logging.INFO, logger="atp_service")
    await membership.balance()  # the taking lost is nothing for the balance's caller to hear
    monkeypatch.undo()
    assert taken, "the log was read"
    assert group not in membership.leases.held and engine.actors[group].vacant
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("atp_service")]
    assert not errors, errors
    assert [r.levelno for r in caplog.records if getattr(r, "event", None) == "group_lost_in_recovery"] == [
        logging.WARNING]
    registry = service.metrics.registry
    assert [registry.get_sample_value("atp_group_recoveries_failed_total", {"reason": reason})
            for reason in ("data", "redis", "bug")] == [0, 0, 0]


async def test_a_taking_lost_in_recovery_keeps_nothing_of_what_it_recovered(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Said, the lost taking is forgotten (``NotRecovered.said_last``): its exception's frames hold the state its
    recovery restored (a whole shard's, for a group another process now serves), kept until the next failed
    taking, if any ever came."""
    group = 3
    _service, _client, membership, _engine, _sku = await stocked_group(start, 1, 5)
    await membership._hand_over(group)
    taken = taken_over_at_the_log_read(monkeypatch, membership, redis_url, group)
    built: list[weakref.ref[Ledger]] = []

    def ledger(shard: int, limits: Limits) -> Ledger:
        made = Ledger(shard, limits)
        built.append(weakref.ref(made))
        return made

    monkeypatch.setattr(recovery, "Ledger", ledger)
    caplog.set_level(logging.CRITICAL, logger="atp_service")  # no log record kept by pytest holds the exception
    await membership.balance()
    monkeypatch.undo()
    assert taken and built, "the log was read, the ledger built"
    assert group not in membership.leases.held
    gc.collect()
    assert [ref() for ref in built] == [None]


async def test_a_start_whose_every_taking_another_won_serves_and_takes_them_later(
        start: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each group taken by another process, then given back, between this one's draw of an epoch and its ACQUIRE:
    every taking outranked (``Fenced``). The first balance raised it, and the start, holding no group, failed with
    it (``redis_wait`` raises a ``Fenced`` as it is): a process that lost a race to the others did not start."""
    draw = GroupLeases._draw

    async def outranked(leases: GroupLeases, group: int) -> str:
        epoch = await draw(leases, group)
        await leases.store.client.set(leases.store.keys.owner(group), f"{number_of(epoch) + 1}:the-other-process")
        return epoch

    monkeypatch.setattr(GroupLeases, "_draw", outranked)
    service, _client = await start(port=held_port(), host="127.0.0.1")
    monkeypatch.undo()
    membership = service.membership
    assert membership is not None and not membership.leases.held
    await membership.balance()
    assert sorted(membership.leases.held) == list(range(SHARDS))
