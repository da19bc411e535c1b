"""A fact read from an input stream and sent to its group's owner, whose answer came too late: the owner's
log append held back (a slow Redis at the owner) past the reader's send timeout. The entry stays pending
and is sent again; the fact is applied once (E8) and its entry acknowledged once it is durable — at that
owner, or at the process that took the group from it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from atp_service import AtpService
from atp_service.edge import record
from atp_service.storage.leases import GroupLeases
from tests.atp_service.app.test_processes import SHARDS, balanced, group_of, members_read, owned, routed
from tests.atp_service.app.test_processes_streams import counted, on_hand
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import services_on
from tests.ports import held_port
from tests.waiting import until

__all__ = ["proxy"]  # the fixture, used by name

STREAM = "atp:in:pos"
LEASED = {"ownership": "leases", "balance_ms": 200, "shards": SHARDS}



@contextlib.asynccontextmanager
async def reader_and_owner(redis_url: str, proxy: HoldingProxy, lease_ms: int,
                           **owner_settings: Any) -> AsyncIterator[tuple[AtpService, AtpService]]:
    """A process reading the stream on Redis, and one owning half the groups, reading none, whose every
    Redis command passes through ``proxy``."""
    proxied = f"redis://127.0.0.1:{proxy._server.sockets[0].getsockname()[1]}/0"  # type: ignore[union-attr]
    async with (
        services_on(redis_url, **LEASED, lease_ms=lease_ms, input_streams=(STREAM,)) as start_reader,
        services_on(proxied, **LEASED, lease_ms=lease_ms, input_streams=(),
                    **owner_settings) as start_owner,
    ):
        running = [await start_reader(port=held_port(), host="127.0.0.1"),
                   await start_owner(port=held_port(), host="127.0.0.1")]
        await members_read(running)
        await until(lambda: balanced(running) and routed(running),
                    "the groups spread over 2 processes", 60)
        yield running[0][0], running[1][0]


def fact_of(owner: AtpService, prefix: str) -> F:
    sku = next(s for s in (f"{prefix}-{i}" for i in range(64)) if group_of(s) in owned(owner))
    return F("slow-fact", "RECEIPT", sku, "DC", 7, int(time.time() * 1000) - 1000)


@pytest.mark.parametrize("in_doubt", [False, True])
async def test_a_fact_whose_owner_answered_after_the_send_timed_out_is_applied_once_and_acknowledged(
        proxy: HoldingProxy, redis_url: str, monkeypatch: pytest.MonkeyPatch, in_doubt: bool) -> None:
    """``in_doubt``: the owner's own wait for Redis ran out first (its append in doubt, settled by the owner)
    before the append landed."""
    monkeypatch.setattr(record, "SEND_TIMEOUT_S", 0.5)
    async with reader_and_owner(redis_url, proxy, 5_000, redis_timeout_s=1.0 if in_doubt else 10.0) as (reader,
                                                                                                        owner):
        fact = fact_of(owner, "late")
        proxy.hold(fact.event_id.encode())  # the owner's append of the fact (its event id is in the entry)
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAM, fact.fields())
        await until(lambda: proxy.held, "the owner's append held", 30)
        services = [reader, owner]
        await until(lambda: counted(services, "atp_forwarded_calls_total", method="RecordEvents",
                                    outcome="error") >= 1, "the reader's send timed out", 30)
        (pending,) = r.xpending_range(STREAM, "atp", "-", "+", 10)
        assert pending["consumer"].decode() == f"atp-1@127.0.0.1:{reader.port}"
        if in_doubt:
            await until(lambda: counted(services, "atp_log_append_failures_total") >= 1,
                        "the owner's append in doubt", 30)
        proxy.hold()
        await proxy.land(proxy.held[0])  # late: the owner's append lands
        await wait_consumed(redis_url, [STREAM])
        assert await on_hand(owner, fact.sku) == 7
        # Applied once, whichever way: the late append refused by the owner's fence and the fact sent again
        # applied anew (counted applied), or landed first and found by the owner's settle (the fact sent
        # again then a duplicate) — which, is the machine's timing.
        assert logged_times(r, fact) == 1


async def test_a_fact_sent_to_an_owner_that_lost_its_group_with_the_append_in_hand_is_applied_once_by_the_next(
        proxy: HoldingProxy, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's append of a forwarded fact and its lease renewals held: its groups lapse and the reader
    takes them, applying the pending fact itself; the owner's append landing after that is refused (its
    owner key raised), and the fact is in the group's log once."""
    monkeypatch.setattr(record, "SEND_TIMEOUT_S", 0.5)
    async with reader_and_owner(redis_url, proxy, 1_500, redis_timeout_s=10.0) as (reader, owner):
        fact = fact_of(owner, "lost")
        proxy.hold(fact.event_id.encode(), GroupLeases._RENEW.sha.encode())
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAM, fact.fields())
        await until(lambda: any(h.marker == b"slow-fact" for h in proxy.held), "the owner's append held", 30)
        await until(lambda: group_of(fact.sku) in owned(reader), "the reader took the group", 30)
        await wait_consumed(redis_url, [STREAM])
        assert await on_hand(reader, fact.sku) == 7
        proxy.hold()
        append = next(h for h in proxy.held if h.marker == b"slow-fact")
        await proxy.land(append)  # the old owner's append, late: refused
        for held in list(proxy.held):
            await proxy.land(held)
        assert await on_hand(reader, fact.sku) == 7
        assert logged_times(r, fact) == 1


def logged_times(r: redis.Redis, fact: F) -> int:
    """How many entries of the fact's group's log hold it (not trimmed: few entries, no snapshot)."""
    log: Any = r.xrange(f"atp:{{g{group_of(fact.sku)}}}:log")
    return sum(value.count(fact.event_id.encode()) for _, fields in log for value in fields.values())
