"""A fact read from an input stream by one process and quarantined by its group's owner, another process
(``ownership = leases``): the reader writes it to the quarantine stream, its entry acknowledged in the same
script (E8: decided once). The owner wrote it and the reader acknowledged the entry after, in a call of its
own: that acknowledgement lost (or the reader gone before it), the entry was read again, and once the group
was served by a process with room (a rolling restart: the owner stopped, its groups taken) the fact was
applied while the quarantine stream, what operators reconcile against, still showed it not applied."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import redis

from atp_client import AtpClient
from atp_service import AtpService
from reservation import Limits
from tests.atp_service.app.test_processes import SHARDS, balanced, group_of, members_read, owned, routed
from tests.atp_service.app.test_processes_streams import counted
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import services_on
from tests.ports import held_port
from tests.waiting import until

__all__ = ["proxy"]  # the fixture, used by name

STREAM = "atp:in:pos"
LEASED = {"ownership": "leases", "lease_ms": 5_000, "balance_ms": 200, "shards": SHARDS}
PLAIN_XACK = b"$4\r\nXACK\r\n"
"""A plain ``XACK`` command as redis-py sends it (the quarantine script names it too, quoted, not so)."""


@contextlib.asynccontextmanager
async def reader_and_owner(redis_url: str, proxy: HoldingProxy) -> AsyncIterator[tuple[AtpService, AtpService]]:
    """A process reading the stream, its every Redis command through ``proxy``, and one owning half the groups,
    reading none, whose shards remember one identity each (``max_dedupe_entries_per_shard``): a second new
    fact is quarantined for want of room."""
    proxied = f"redis://127.0.0.1:{proxy._server.sockets[0].getsockname()[1]}/0"  # type: ignore[union-attr]
    async with (
        services_on(proxied, **LEASED, input_streams=(STREAM,)) as start_reader,
        services_on(redis_url, **LEASED, input_streams=(),
                    limits=Limits(max_dedupe_entries_per_shard=1)) as start_owner,
    ):
        running = [await start_reader(port=held_port(), host="127.0.0.1"),
                   await start_owner(port=held_port(), host="127.0.0.1")]
        await members_read(running)
        await until(lambda: balanced(running) and routed(running), "the groups spread over 2 processes", 60)
        yield running[0][0], running[1][0]


async def _on_hand(service: AtpService, sku: str) -> int:
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=5) as client:
        (position,) = await client.availability([(sku, "DC")])
        return position.on_hand


async def test_a_fact_its_owner_quarantined_is_not_applied_once_its_group_moves_to_a_process_with_room(
        proxy: HoldingProxy, redis_url: str) -> None:
    async with reader_and_owner(redis_url, proxy) as (reader, owner):
        sku = next(s for s in (f"q-{i}" for i in range(64)) if group_of(s) in owned(owner))
        now = int(time.time() * 1000)
        r = redis.Redis.from_url(redis_url)
        r.xadd(STREAM, F("e1", "RECEIPT", sku, "DC", 4, now - 2000).fields())  # remembered: the shard at its bound
        await wait_consumed(redis_url, [STREAM])
        proxy.hold(PLAIN_XACK, reset=True)  # the reader's own acknowledgements lost from now on
        r.xadd(STREAM, F("e2", "RECEIPT", sku, "DC", 5, now - 1000).fields())  # quarantined by the owner: no room
        await until(lambda: proxy.held, "the reader's acknowledgement of e2, after its owner's answer")
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
        await owner.stop()  # a rolling restart: its groups handed over, taken by the reader, which has room
        await until(lambda: set(range(SHARDS)) <= owned(reader), "the owner's groups taken by the reader", 60)
        proxy.hold()
        proxy.drop()  # the reader's acknowledgements arrive again
        await wait_consumed(redis_url, [STREAM])
        assert await _on_hand(reader, sku) == 4, "e2 as the quarantine stream shows it: not applied"
        assert [f[b"event_id"] for _, f in r.xrange("atp:quarantine")] == [b"e2"]
        assert counted([reader, owner], "atp_facts_total", outcome="quarantined") == 1
